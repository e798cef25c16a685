#!/usr/bin/env python
import os
import sys

from infra.env import load_local_env

if __name__ == "__main__":
    load_local_env()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

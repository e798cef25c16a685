"""python manage.py evaluate [--limit N] [--protocols a,b,c,d,e] [--model sface|student]
                             [--output docs/accuracy.md] [--model-dir var/models]

Runs the accuracy protocols of `workers.evaluation` on ../shared/data and writes docs/accuracy.md, its JSON
twin (docs/accuracy.json) and SVG curves (docs/accuracy/*.svg). Faces and embeddings are cached under
var/eval-cache/, so a rerun only recomputes the statistics. See docs/accuracy.md for the protocols.
"""

import shlex
import sys

from django.core.management.base import BaseCommand, CommandError

from workers.evaluation.report import build_parser, options_to_call, run_evaluation
from workers.training.datasets import SharedDataUnavailable


class Command(BaseCommand):
    help = "Measure face-identification accuracy (LFW, masked LFW, RWMFD) and write docs/accuracy.md."

    def add_arguments(self, parser):
        build_parser(parser)

    def handle(self, *args, **options):
        try:
            document = run_evaluation(
                **options_to_call(options),
                command="python manage.py evaluate " + shlex.join(sys.argv[2:]),
                log=lambda message: self.stderr.write(message),
            )
        except (SharedDataUnavailable, FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from error
        for target in document["targets"]:
            status = {True: "met", False: "NOT met"}.get(target.get("met"), "n/a")
            self.stdout.write(
                f"{target['description']}: baseline {target['baseline']}, best {target['best']} "
                f"({target['best_configuration']}) -> {status}"
            )
        self.stdout.write(f"wrote {options['output']} (+ .json and SVG plots)")

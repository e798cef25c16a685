"""Offline training of Visor's small models, and the data splits shared with evaluation."""

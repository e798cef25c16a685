"""JSON request bodies, refused with a clear 4xx problem where DRF's JSONParser would end in a 500.

DRF's parser reads a body of any size (Django's DATA_UPLOAD_MAX_MEMORY_SIZE guards `request.body`, which
DRF bypasses) and lets a deeply nested document raise RecursionError.
"""

import io

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from infra.problems import Problem


class RequestTooLarge(Problem):
    status_code = 413
    problem_type = "request-too-large"
    title = "Request too large"


class ApiJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.VISOR_MAX_JSON_BODY_BYTES
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise RequestTooLarge(f"A JSON request body may hold at most {limit} bytes.")
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None

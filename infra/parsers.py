"""Request bodies, refused with a clear 4xx problem where DRF's parsers would end in a 500 or read too much.

DRF's parser reads a body of any size (Django's DATA_UPLOAD_MAX_MEMORY_SIZE guards `request.body`, which
DRF bypasses) and lets a deeply nested document raise RecursionError, there or later.
"""

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

from infra.problems import Problem

# No request of the API needs more; deeper documents parse, but then fail Python's recursion limit wherever
# they are encoded again (validation, storage, the answer).
MAX_JSON_DEPTH = 32


def json_depth(value) -> int:
    """How many objects and arrays a parsed JSON value nests (a scalar 0, `[]` 1), found without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, outer = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, outer + 1)
            pending.extend(
                (child, outer + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


class RequestTooLarge(Problem):
    status_code = 413
    problem_type = "request-too-large"
    title = "Request too large"


class ApiJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        _refuse_longer_than(parser_context, settings.VISOR_MAX_JSON_BODY_BYTES, "JSON")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise _nested_too_deeply() from None
        if json_depth(data) > MAX_JSON_DEPTH:
            raise _nested_too_deeply()
        return data


def _refuse_longer_than(parser_context, limit: int, what: str) -> None:
    """Refuse a body whose Content-Length passes `limit` before any of it is read. Django reads no body past
    the Content-Length it was given, so a body sent without one is not a way around this."""
    try:
        length = int(parser_context["request"].META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise RequestTooLarge(f"A {what} request body may hold at most {limit} bytes.")


class ApiMultiPartParser(MultiPartParser):
    """Refuses a form larger than the request could need, before Django spools its files into memory or
    onto the (memory-backed) temporary directory."""

    def parse(self, stream, media_type=None, parser_context=None):
        _refuse_longer_than(parser_context, settings.VISOR_MAX_MULTIPART_BODY_BYTES, "form")
        return super().parse(stream, media_type, parser_context)


class ApiFormParser(FormParser):
    """Refuses a URL-encoded form larger than the request could need: DRF's parser reads the whole body into
    memory, however long."""

    def parse(self, stream, media_type=None, parser_context=None):
        _refuse_longer_than(parser_context, settings.VISOR_MAX_FORM_BODY_BYTES, "form")
        return super().parse(stream, media_type, parser_context)


def _nested_too_deeply() -> ParseError:
    return ParseError(f"JSON parse error - the document is nested more than {MAX_JSON_DEPTH} levels deep.")

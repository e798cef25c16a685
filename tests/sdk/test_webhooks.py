"""webhooks.verify refuses every header it cannot trust with WebhookVerificationError, nothing else."""

import time

import pytest
import visor

BODY = b'{"id": "evt_1", "type": "job.succeeded", "data": {"id": "j"}}'


def test_a_signature_that_is_not_ascii_is_refused_as_not_matching():
    now = int(time.time())

    with pytest.raises(visor.WebhookVerificationError, match="does not match"):
        visor.webhooks.verify(BODY, {"Visor-Signature": f"t={now},v1=é"}, "whsec", now=now)


def test_a_valid_signature_next_to_one_that_is_not_ascii_still_verifies():
    now = int(time.time())
    header = f"t={now},v1=é," + visor.webhooks.sign(BODY, "whsec", now).split(",", 1)[1]

    assert visor.webhooks.verify(BODY, {"Visor-Signature": header}, "whsec", now=now)["id"] == "evt_1"

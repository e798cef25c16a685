"""The SDK against a real Visor server and worker: resources, typed results, errors, async."""

import asyncio
import io

import cv2
import numpy as np
import pytest
import visor
from PIL import Image

from tests.face_images import encode, face_photo, person_image

pytestmark = pytest.mark.django_db(transaction=True)

BLANK = encode(np.full((480, 640, 3), 200, dtype=np.uint8))


def test_galleries_and_subjects_round_trip_with_auto_pagination_and_typed_errors(client):
    created = [client.galleries.create(name=f"G{i}", description="d") for i in range(3)]

    listed = list(client.galleries.list(page_size=2))
    assert [g.id for g in listed] == [g.id for g in created]
    assert isinstance(listed[0], visor.Gallery)
    assert client.galleries.update(created[0].id, name="Renamed").name == "Renamed"
    assert client.galleries.get(created[0].id).description == "d"

    subject = client.subjects.create(
        gallery_id=created[0].id, external_id="emp-1", name="Ada", metadata={"team": "x"}
    )
    assert isinstance(subject, visor.Subject)
    assert subject.metadata == {"team": "x"}
    assert [s.id for s in client.subjects.list(gallery_id=created[0].id, external_id="emp-1")] == [subject.id]
    assert list(client.subjects.list(gallery_id=created[0].id, external_id="nobody")) == []
    assert client.subjects.update(subject.id, name="Ada L.").name == "Ada L."
    with pytest.raises(visor.ConflictError):
        client.subjects.create(gallery_id=created[0].id, external_id="emp-1")
    client.subjects.delete(subject.id)

    with pytest.raises(visor.ValidationError) as invalid:
        client.galleries.create(name="")
    assert invalid.value.status == 400
    assert "name" in invalid.value.errors

    client.galleries.delete(created[2].id)
    with pytest.raises(visor.NotFoundError) as missing:
        client.galleries.get(created[2].id)
    error = missing.value
    assert (error.status, error.type, error.title) == (404, "not-found", "Not found")
    assert error.request_id
    assert error.detail


def test_enroll_from_every_image_kind_then_identify_verify_and_detect(client, tmp_path):
    gallery = client.galleries.create(name="Staff")
    alice = client.subjects.create(gallery_id=gallery.id, external_id="alice", name="Alice")
    bob = client.subjects.create(gallery_id=gallery.id, external_id="bob")
    path = tmp_path / "alice.jpg"
    path.write_bytes(person_image(1))

    face = client.faces.enroll(subject_id=alice.id, image=path)
    assert isinstance(face, visor.Face)
    assert face.subject_id == alice.id
    with io.BytesIO(person_image(1, offset=(20, 0))) as handle:
        assert isinstance(client.faces.enroll(subject_id=alice.id, image=handle), visor.Face)
    pil = Image.open(io.BytesIO(person_image(2)))
    assert isinstance(client.faces.enroll(subject_id=bob.id, image=pil), visor.Face)
    job = client.faces.enroll(subject_id=bob.id, image=np.asarray(pil.convert("RGB")), wait=False)
    assert isinstance(job, visor.Job)
    finished = client.jobs.wait(job.id, timeout=60, poll_interval=0.1)
    assert finished.status == "succeeded", finished.error
    assert finished.face is not None
    assert client.jobs.get(job.id).status == "succeeded"

    assert {f.id for f in client.faces.list(subject_id=alice.id)} >= {face.id}
    assert client.faces.get(face.id).id == face.id

    result = client.identify(gallery_id=gallery.id, image=person_image(1, offset=(-15, 10)))
    assert isinstance(result, visor.IdentifyResult)
    match = result.faces[0].match
    assert match is not None
    assert (match.external_id, match.subject_id, match.name) == ("alice", alice.id, "Alice")
    assert match.similarity > 0.5
    assert result.faces[0].candidates[0].external_id == "alice"

    # Cartoon faces all look alike to the model: a stranger is one below a strict threshold.
    stranger = client.identify(gallery_id=gallery.id, image=person_image(99), threshold=0.995)
    assert stranger.faces[0].match is None
    assert stranger.faces[0].threshold == 0.995
    assert stranger.matches == []

    verified = client.verify(image=person_image(2, offset=(10, 5)), subject_id=bob.id)
    assert isinstance(verified, visor.VerifyResult)
    assert verified.match is True
    assert client.verify(image=person_image(1), image2=person_image(2), threshold=0.995).match is False

    detected = client.detect(image=person_image(3))
    assert len(detected.faces) == 1
    assert detected.faces[0].bbox is not None
    assert (detected.width, detected.height) == (640, 480)

    client.faces.delete(face.id)
    with pytest.raises(visor.NotFoundError):
        client.faces.get(face.id)


def test_a_photo_without_a_face_raises_face_rejected_with_its_reasons(client):
    gallery = client.galleries.create(name="Staff")
    subject = client.subjects.create(gallery_id=gallery.id, external_id="x")

    with pytest.raises(visor.FaceRejectedError) as rejected:
        client.faces.enroll(subject_id=subject.id, image=BLANK)
    assert rejected.value.reasons == ["NO_FACE"]
    assert rejected.value.status == 422
    with pytest.raises(visor.InvalidImageError):
        client.faces.enroll(subject_id=subject.id, image=b"this is not an image")


def test_quality_filter_lets_a_slightly_blurred_photo_be_enrolled(client):
    gallery = client.galleries.create(name="Staff")
    subject = client.subjects.create(gallery_id=gallery.id, external_id="x")
    blurred = encode(cv2.GaussianBlur(face_photo(size=110), (0, 0), 4))

    with pytest.raises(visor.FaceRejectedError) as rejected:
        client.faces.enroll(subject_id=subject.id, image=blurred)
    face = client.faces.enroll(subject_id=subject.id, image=blurred, quality_filter="low")

    assert rejected.value.reasons == ["BLURRY"]
    assert face.subject_id == subject.id


def test_a_wrong_key_raises_authentication_error(visor_server):
    client = visor.Client(api_key="vsr_wrong", base_url=visor_server.url)
    with client, pytest.raises(visor.AuthenticationError) as error:
        client.tenant()
    assert error.value.status == 401


def test_tenant_reports_the_callers_tenant(client, visor_server):
    assert client.tenant().id == str(visor_server.tenant.id)


def test_the_async_client_has_the_same_surface(visor_server):
    async def scenario():
        async with visor.AsyncClient(api_key=visor_server.key, base_url=visor_server.url) as client:
            gallery = await client.galleries.create(name="Async")
            subject = await client.subjects.create(gallery_id=gallery.id, external_id="amy")
            face = await client.faces.enroll(subject_id=subject.id, image=person_image(5))
            assert isinstance(face, visor.Face)
            names = [g.name async for g in client.galleries.list(page_size=1)]
            result = await client.identify(gallery_id=gallery.id, image=person_image(5, offset=(8, 8)))
            with pytest.raises(visor.NotFoundError):
                await client.subjects.get("00000000-0000-0000-0000-000000000000")
            return names, result

    names, result = asyncio.run(scenario())
    assert names == ["Async"]
    assert result.faces[0].match.external_id == "amy"

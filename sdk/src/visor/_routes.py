"""Which SDK method calls which API operation (method, path template). The contract test checks that every
operation of the server's OpenAPI schema appears here and that each named method exists on both clients."""

OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/v1/tenant"): "tenant",
    ("POST", "/v1/galleries"): "galleries.create",
    ("GET", "/v1/galleries"): "galleries.list",
    ("GET", "/v1/galleries/{gallery_id}"): "galleries.get",
    ("PATCH", "/v1/galleries/{gallery_id}"): "galleries.update",
    ("DELETE", "/v1/galleries/{gallery_id}"): "galleries.delete",
    ("POST", "/v1/galleries/{gallery_id}/subjects"): "subjects.create",
    ("GET", "/v1/galleries/{gallery_id}/subjects"): "subjects.list",
    ("POST", "/v1/galleries/{gallery_id}/identify"): "identify",
    ("GET", "/v1/subjects/{subject_id}"): "subjects.get",
    ("PATCH", "/v1/subjects/{subject_id}"): "subjects.update",
    ("DELETE", "/v1/subjects/{subject_id}"): "subjects.delete",
    ("POST", "/v1/subjects/{subject_id}/faces"): "faces.enroll",
    ("GET", "/v1/subjects/{subject_id}/faces"): "faces.list",
    ("GET", "/v1/faces/{face_id}"): "faces.get",
    ("DELETE", "/v1/faces/{face_id}"): "faces.delete",
    ("POST", "/v1/verify"): "verify",
    ("POST", "/v1/detect"): "detect",
    ("GET", "/v1/jobs/{job_id}"): "jobs.get",
    ("GET", "/v1/usage"): "usage",
    ("GET", "/v1/invoices"): "invoices.list",
    ("GET", "/v1/invoices/{invoice_id}"): "invoices.get",
    ("GET", "/v1/invoices/{invoice_id}.csv"): "invoices.csv",
}

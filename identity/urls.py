from django.urls import path

from identity import views

app_name = "identity"
urlpatterns = [
    path("galleries", views.GalleryListView.as_view(), name="gallery-list"),
    path("galleries/<str:gallery_id>", views.GalleryDetailView.as_view(), name="gallery-detail"),
    path("galleries/<str:gallery_id>/subjects", views.SubjectListView.as_view(), name="subject-list"),
    path("galleries/<str:gallery_id>/identify", views.IdentifyView.as_view(), name="identify"),
    path("subjects/<str:subject_id>", views.SubjectDetailView.as_view(), name="subject-detail"),
    path("subjects/<str:subject_id>/faces", views.SubjectFacesView.as_view(), name="subject-faces"),
    path("faces/<str:face_id>", views.FaceDetailView.as_view(), name="face-detail"),
    path("verify", views.VerifyView.as_view(), name="verify"),
    path("detect", views.DetectView.as_view(), name="detect"),
    path("jobs/<str:job_id>", views.JobDetailView.as_view(), name="job-detail"),
]

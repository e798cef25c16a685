app_name = "identity"
urlpatterns = []

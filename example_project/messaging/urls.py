from django.urls import path

from messaging import views

urlpatterns = [
    path("", views.status, name="status"),
    path("api/messages", views.ingest, name="ingest"),
    path("api/stats", views.stats, name="stats"),
]

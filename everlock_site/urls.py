from django.contrib import admin
from django.urls import path

from everlock_site.scrape import metrics_view

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
    path("", admin.site.urls),
]

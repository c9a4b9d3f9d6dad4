from django.contrib import admin
from django.urls import path

admin.site.site_header = "Everlock administration"
admin.site.site_title = "Everlock"

urlpatterns = [
    path("", admin.site.urls),
]

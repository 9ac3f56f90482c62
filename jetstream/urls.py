from __future__ import annotations

from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

from apps.billing.report_views import report_view
from apps.cabinets.access import home
from apps.cabinets.admin_site import JetstreamAdminSite
from apps.cabinets.signin import accept_invitation


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


# The admin asks for the same password + TOTP sign-in as the cabinets (django-otp's documented way
# to guard the default site, so every ModelAdmin registered on it stays where it is).
admin.site.__class__ = JetstreamAdminSite
admin.site.site_header = "Jetstream"
admin.site.site_title = "Jetstream"
admin.site.index_title = _("Jetstream administration")

urlpatterns = [
    path("", home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("admin/billing/reports/", admin.site.admin_view(report_view), name="billing_reports"),
    path("admin/", admin.site.urls),
    path("accounts/invitation/<str:key>/", accept_invitation, name="invitation_accept"),
    path("accounts/", include("allauth.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("apps.cabinets.urls")),
]

from __future__ import annotations

from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

from apps.billing.report_views import report_view
from apps.cabinets.access import home


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


admin.site.site_header = "Jetstream"
admin.site.site_title = "Jetstream"
admin.site.index_title = _("Jetstream administration")

urlpatterns = [
    path("", home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("admin/billing/reports/", admin.site.admin_view(report_view), name="billing_reports"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("apps.cabinets.urls")),
]

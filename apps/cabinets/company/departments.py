"""The company cabinet's departments: the tree with each monthly budget and this month's spend
against it; managers create, edit and delete them (``apps.accounts.services``)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from apps.accounts import services as accounts
from apps.accounts.models import Department
from apps.cabinets.access import COMPANY_MANAGERS, company_object, company_view
from apps.cabinets.company.forms import DepartmentForm, apply_errors
from apps.cabinets.company.helpers import in_company_time_zone
from apps.cabinets.rendering import render_page
from apps.proxy import services as tokens


def _department(request: HttpRequest, department_id: int) -> Department:
    return company_object(request, Department.objects.select_related("company", "parent"), pk=department_id)


def _list_page(request: HttpRequest, form: DepartmentForm | None = None) -> HttpResponse:
    company = request.company  # type: ignore[attr-defined]
    can_manage = request.membership.role in COMPANY_MANAGERS  # type: ignore[attr-defined]
    context = {"rows": tokens.department_budgets(company=company), "can_manage": can_manage,
               "form": form or (DepartmentForm(company=company) if can_manage else None)}
    return render_page(request, "cabinets/company/departments.html", context)


@company_view()
@in_company_time_zone
def department_list(request: HttpRequest) -> HttpResponse:
    """The departments as a tree: monthly budget, spend this month (own and with sub-departments),
    what is left, tokens; the form to add one for managers."""
    return _list_page(request)


@company_view(*COMPANY_MANAGERS)
@require_POST
@in_company_time_zone
def department_create(request: HttpRequest) -> HttpResponse:
    """Add a department (errors: the list page again, with the form's errors)."""
    company = request.company  # type: ignore[attr-defined]
    form = DepartmentForm(request.POST, company=company)
    if form.is_valid():
        data = form.cleaned_data
        slug = data["slug"] or accounts.new_department_slug(company=company, name=data["name"])
        try:
            accounts.create_department(company=company, slug=slug, name=data["name"], parent=data["parent"],
                                       monthly_budget=data["monthly_budget"])
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(request, _("Department %(name)s is added.") % {"name": data["name"]})
            return redirect("cabinets:company:departments")
    return _list_page(request, form)


@company_view(*COMPANY_MANAGERS)
@in_company_time_zone
def department_edit(request: HttpRequest, department_id: int) -> HttpResponse:
    """Rename a department, move it in the tree or change its monthly budget."""
    department = _department(request, department_id)
    initial = {"name": department.name, "parent": department.parent, "monthly_budget": department.monthly_budget}
    form = DepartmentForm(request.POST or None, company=department.company, department=department, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            accounts.update_department(department=department, name=data["name"], parent=data["parent"],
                                       monthly_budget=data["monthly_budget"])
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(request, _("Department %(name)s is saved.") % {"name": data["name"]})
            return redirect("cabinets:company:departments")
    return render_page(request, "cabinets/company/department_form.html", {"form": form, "department": department})


@company_view(*COMPANY_MANAGERS)
@require_POST
def department_delete(request: HttpRequest, department_id: int) -> HttpResponse:
    """Delete a department nothing refers to (otherwise say what still does)."""
    department = _department(request, department_id)
    try:
        accounts.delete_department(department=department)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, _("Department %(name)s is deleted.") % {"name": department.name})
    return redirect("cabinets:company:departments")

"""The company cabinet's departments: the tree with budgets and this month's spend; create, edit,
delete — for the company's own departments only."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.accounts.models import CompanyRole, Department, Membership
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

RUB = 1_000_000


@pytest.fixture
def manager(personas, signed_in):
    return signed_in(personas.manager_a)


def test_it_shows_the_tree_with_budgets_and_spend_this_month(personas, manager, catalog):
    research = catalog.department  # budget 5000 RUB; one usage record of 1.234567 RUB this month
    personas.company_a.departments.create(slug="nlp", name="NLP group", parent=research, monthly_budget=100 * RUB)
    personas.company_b.departments.create(slug="hidden", name="B hidden dept")
    page = manager.get(reverse("cabinets:company:departments"))
    assert page.status_code == 200
    rows = page.context["rows"]
    assert [(row.department.name, row.depth) for row in rows] == [("Research", 0), ("NLP group", 1)]
    assert rows[0].use.spent == 1_234_567 and rows[0].use.remaining == 5000 * RUB - 1_234_567 and rows[0].tokens == 1
    assert rows[0].subtree_spent == 1_234_567 and rows[1].use.spent == 0
    body = page.content.decode()
    assert "Research" in body and "NLP group" in body and "B hidden dept" not in body


def test_it_creates_a_department_with_a_slug_made_from_a_russian_name(personas, manager):
    response = manager.post(reverse("cabinets:company:department_create"), {"name": "Отдел продаж", "monthly_budget": "1500,50"})
    assert response.status_code == 302
    department = Department.objects.get(company=personas.company_a)
    assert (department.slug, department.monthly_budget) == ("otdel-prodazh", 1_500_500_000)
    manager.post(reverse("cabinets:company:department_create"), {"name": "Отдел продаж"})
    assert Department.objects.filter(company=personas.company_a, slug="otdel-prodazh-2").exists()


def test_it_refuses_a_bad_department_with_clear_errors(personas, manager):
    other = personas.company_b.departments.create(slug="b", name="B")
    response = manager.post(reverse("cabinets:company:department_create"), {"name": "", "parent": other.pk, "monthly_budget": "-1"})
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"name", "parent", "monthly_budget"}
    assert not Department.objects.filter(company=personas.company_a).exists()


def test_it_edits_a_department_and_refuses_a_cycle(personas, manager):
    top = personas.company_a.departments.create(slug="top", name="Top")
    child = personas.company_a.departments.create(slug="child", name="Child", parent=top)
    url = reverse("cabinets:company:department_edit", kwargs={"department_id": top.pk})
    assert manager.get(url).status_code == 200
    response = manager.post(url, {"name": "Top", "parent": child.pk})
    assert response.status_code == 200 and list(response.context["form"].errors) == ["parent"]
    assert manager.post(url, {"name": "Headquarters", "monthly_budget": "10"}).status_code == 302
    top.refresh_from_db()
    assert (top.name, top.monthly_budget) == ("Headquarters", 10 * RUB)


def test_it_deletes_an_empty_department_and_keeps_one_in_use(personas, manager, catalog):
    empty = personas.company_a.departments.create(slug="empty", name="Empty")
    manager.post(reverse("cabinets:company:department_delete", kwargs={"department_id": empty.pk}))
    assert not Department.objects.filter(pk=empty.pk).exists()
    response = manager.post(reverse("cabinets:company:department_delete", kwargs={"department_id": catalog.department.pk}), follow=True)
    assert Department.objects.filter(pk=catalog.department.pk).exists()
    assert [m.level_tag for m in response.context["messages"]][-1] == "error"


def test_it_lets_a_viewer_see_but_change_nothing(personas, signed_in, django_user_model):
    user = django_user_model.objects.create_user("viewer@example.com", PASSWORD)
    Membership.objects.create(user=user, company=personas.company_a, role=CompanyRole.VIEWER)
    department = personas.company_a.departments.create(slug="d", name="D")
    viewer = signed_in(user)
    page = viewer.get(reverse("cabinets:company:departments"))
    assert page.status_code == 200 and page.context["form"] is None
    assert viewer.post(reverse("cabinets:company:department_create"), {"name": "X"}).status_code == 403
    assert viewer.get(reverse("cabinets:company:department_edit", kwargs={"department_id": department.pk})).status_code == 403
    assert viewer.post(reverse("cabinets:company:department_delete", kwargs={"department_id": department.pk})).status_code == 403


def test_another_companys_department_is_404(personas, manager):
    other = personas.company_b.departments.create(slug="b", name="B")
    assert manager.get(reverse("cabinets:company:department_edit", kwargs={"department_id": other.pk})).status_code == 404
    assert manager.post(reverse("cabinets:company:department_edit", kwargs={"department_id": other.pk}), {"name": "x"}).status_code == 404
    assert manager.post(reverse("cabinets:company:department_delete", kwargs={"department_id": other.pk})).status_code == 404
    assert Department.objects.filter(pk=other.pk, name="B").exists()

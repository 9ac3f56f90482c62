"""The custom email-login user: add with email + password twice, change form, company inlines."""

from __future__ import annotations

from django.urls import reverse

from apps.accounts.models import Company, Department, Membership, User

GOOD_PASSWORD = "tangerine-orbit-lantern-42"


def _add(client, **overrides):
    data = {"email": "New.Person@Example.COM", "full_name": "New Person", "language": "ru", "password1": GOOD_PASSWORD,
            "password2": GOOD_PASSWORD, "_save": "Save"}
    data.update(overrides)
    return client.post(reverse("admin:accounts_user_add"), data)


def test_it_adds_a_user_by_email_and_password(superadmin_client, personas):
    form = superadmin_client.get(reverse("admin:accounts_user_add")).content.decode()
    assert 'name="email"' in form and 'name="password1"' in form and 'name="password2"' in form
    assert 'name="username"' not in form
    response = _add(superadmin_client)
    assert response.status_code == 302
    user = User.objects.get(email="new.person@example.com")
    assert user.check_password(GOOD_PASSWORD)
    assert not user.is_staff and not user.is_superuser


def test_it_refuses_mismatched_weak_or_duplicate_passwords_and_emails(superadmin_client, personas):
    mismatch = _add(superadmin_client, password2="something-else-entirely")
    assert "password2" in mismatch.context["adminform"].form.errors
    weak = _add(superadmin_client, password1="short", password2="short")
    assert weak.context["adminform"].form.errors
    duplicate = _add(superadmin_client, email="MANAGER-A@example.com")
    assert "email" in duplicate.context["adminform"].form.errors
    assert User.objects.count() == 5


def test_it_changes_a_user_without_touching_the_password(superadmin_client, personas):
    user = personas.manager_a
    page = superadmin_client.get(reverse("admin:accounts_user_change", args=[user.pk])).content.decode()
    assert user.password not in page
    data = {
        "email": user.email, "full_name": "Anna Manager", "language": "en", "is_active": "on",
        "date_joined_0": "2026-01-01", "date_joined_1": "10:00:00",
        "memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "1", "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": Membership.objects.get(user=user).pk, "memberships-0-user": user.pk,
        "memberships-0-company": personas.company_a.pk, "memberships-0-role": "owner",
        "supplier_memberships-TOTAL_FORMS": "0", "supplier_memberships-INITIAL_FORMS": "0",
        "supplier_memberships-MIN_NUM_FORMS": "0", "supplier_memberships-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    response = superadmin_client.post(reverse("admin:accounts_user_change", args=[user.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    password_before = user.password
    user.refresh_from_db()
    assert user.full_name == "Anna Manager" and user.language == "en"
    assert user.password == password_before
    assert Membership.objects.get(user=user).role == "owner"


def test_it_edits_a_company_with_departments_and_memberships_inline(superadmin_client, personas):
    company = personas.company_b
    data = {
        "name": "Company B", "slug": "company-b", "time_zone": "Asia/Yekaterinburg", "sell_coefficient": "1.2500",
        "data_residency": "any", "fallbacks": "{}", "is_active": "on",
        "departments-TOTAL_FORMS": "1", "departments-INITIAL_FORMS": "0", "departments-MIN_NUM_FORMS": "0",
        "departments-MAX_NUM_FORMS": "1000",
        "departments-0-slug": "ml", "departments-0-name": "ML", "departments-0-parent": "",
        "departments-0-monthly_budget": "25000.75",
        "model_coefficients-TOTAL_FORMS": "0", "model_coefficients-INITIAL_FORMS": "0",
        "memberships-TOTAL_FORMS": "2", "memberships-INITIAL_FORMS": "1", "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": Membership.objects.get(user=personas.manager_b).pk, "memberships-0-company": company.pk,
        "memberships-0-user": personas.manager_b.pk, "memberships-0-role": "manager",
        "memberships-1-id": "", "memberships-1-company": company.pk, "memberships-1-user": personas.outsider.pk,
        "memberships-1-role": "viewer",
        "_save": "Save",
    }
    response = superadmin_client.post(reverse("admin:accounts_company_change", args=[company.pk]), data)
    assert response.status_code == 302, response.context["errors"]
    company.refresh_from_db()
    assert company.time_zone == "Asia/Yekaterinburg"
    assert Department.objects.get(company=company, slug="ml").monthly_budget == 25_000_750_000
    assert Membership.objects.filter(company=company, user=personas.outsider, role="viewer").exists()
    page = superadmin_client.get(reverse("admin:accounts_company_change", args=[company.pk])).content.decode()
    assert 'value="25000.75"' in page


def test_it_refuses_a_bad_time_zone(superadmin_client, personas):
    response = superadmin_client.post(reverse("admin:accounts_company_add"), {
        "name": "C", "slug": "c", "time_zone": "Mars/Olympus", "sell_coefficient": "1", "is_active": "on",
        "departments-TOTAL_FORMS": "0", "departments-INITIAL_FORMS": "0", "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0", "_save": "Save"})
    assert response.status_code == 200
    assert "time_zone" in response.context["adminform"].form.errors
    assert not Company.objects.filter(slug="c").exists()


def test_it_sets_a_password_from_the_admin_without_showing_the_hash(superadmin_client, personas):
    user = personas.outsider
    url = reverse("admin:auth_user_password_change", args=[user.pk])
    page = superadmin_client.get(url)
    assert page.status_code == 200 and user.password not in page.content.decode()
    response = superadmin_client.post(url, {"password1": GOOD_PASSWORD, "password2": GOOD_PASSWORD, "usable_password": "true"})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(GOOD_PASSWORD)

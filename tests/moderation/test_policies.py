"""The policy: per company with per-token overrides, the platform default, the cache and its invalidation,
the form's validation and the admin."""

from __future__ import annotations

import redis as redis_lib
from django.conf import settings
from django.urls import reverse

from apps.moderation import policies
from apps.moderation.findings import Action, Category, Direction
from apps.moderation.forms import PolicyForm, action_field_name
from apps.moderation.models import ContentRule, FailureMode, Policy, PolicyMode, SensitiveRouting
from apps.moderation.policies import DEFAULT_POLICY, VERSION_KEY, load_policy, policy_for


def _token(company, name="ci"):
    from apps.proxy.models import ApiToken

    token = ApiToken(company=company, name=name)
    token.set_secret()
    token.save()
    return token


def test_a_company_without_a_policy_gets_the_default_off(personas):
    policy = load_policy(personas.company_a.pk, None)
    assert policy is DEFAULT_POLICY
    assert not policy.active
    assert policy.action_for(Category.PHONE, Direction.PROMPT) == Action.ALLOW


def test_a_token_override_takes_the_company_policy_s_place(personas):
    token, other = _token(personas.company_a), _token(personas.company_a, "other")
    Policy.objects.create(company=personas.company_a, mode=PolicyMode.MONITOR)
    override = Policy.objects.create(company=personas.company_a, token=token, mode=PolicyMode.ENFORCE,
                                     content_image=ContentRule.BLOCK, on_failure=FailureMode.OPEN,
                                     sensitive_routing=SensitiveRouting.RU, scan_budget_ms=1500, keep_mapping=True)
    assert load_policy(personas.company_a.pk, token.pk).id == override.pk
    assert load_policy(personas.company_a.pk, other.pk).mode == PolicyMode.MONITOR
    effective = load_policy(personas.company_a.pk, token.pk)
    assert effective.content_rule("image") == ContentRule.BLOCK
    assert (effective.fail_closed, effective.sensitive_routing, effective.scan_budget_seconds, effective.keep_mapping) == (
        False, "ru", 1.5, True)
    assert effective.scans_responses


def test_the_monitor_mode_caps_actions_at_log(personas):
    Policy.objects.create(company=personas.company_a, mode=PolicyMode.MONITOR)
    policy = load_policy(personas.company_a.pk, None)
    assert policy.action_for(Category.SECRET, Direction.PROMPT) == Action.LOG


def test_the_cache_is_dropped_on_save_here_and_through_redis_elsewhere(personas, django_capture_on_commit_callbacks):
    row = Policy.objects.create(company=personas.company_a, mode=PolicyMode.ENFORCE)
    policies.invalidate_local()
    first = policy_for(personas.company_a.pk)
    assert policy_for(personas.company_a.pk) is first  # cached
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    before = int(client.get(VERSION_KEY) or 0)
    with django_capture_on_commit_callbacks(execute=True):
        row.mode = PolicyMode.MONITOR
        row.save()
    assert policy_for(personas.company_a.pk).mode == PolicyMode.MONITOR
    assert int(client.get(VERSION_KEY)) == before + 1
    # another process sees the version change on its next poll
    other = policies.PolicyCache()
    assert other.get(personas.company_a.pk, None).mode == PolicyMode.MONITOR
    Policy.objects.filter(pk=row.pk).update(mode=PolicyMode.OFF)  # behind Django's back: no signal
    client.incr(VERSION_KEY)
    other._checked_at = 0.0
    assert other.get(personas.company_a.pk, None).mode == PolicyMode.OFF
    client.close()


def _form_data(company, **overrides):
    data = {"company": company.pk, "mode": "enforce", "use_ner": "on", "use_injection_heuristics": "on",
            "content_text": "scan", "content_image": "scan", "content_document": "scan", "llm_prompt": "p",
            "llm_timeout_ms": 3000, "external_timeout_ms": 3000, "on_failure": "closed", "scan_budget_ms": 5000,
            "sensitive_routing": "block"}
    for direction in Direction:
        for category in Category:
            data[action_field_name(direction, category)] = "log"
    return data | overrides


def test_the_form_refuses_a_regex_that_does_not_compile(personas):
    form = PolicyForm(data=_form_data(personas.company_a, custom_patterns="CASE-\\d{4}\n(unclosed"))
    assert not form.is_valid()
    assert "custom_patterns" in form.errors
    assert "2" in form.errors["custom_patterns"][0]
    form = PolicyForm(data=_form_data(personas.company_a, custom_patterns=".*"))
    assert not form.is_valid()  # matches empty text


def test_the_form_saves_the_actions_grid(personas):
    data = _form_data(personas.company_a, custom_patterns="CASE-\\d{4}")
    data[action_field_name(Direction.PROMPT, Category.PHONE)] = "block"
    form = PolicyForm(data=data)
    assert form.is_valid(), form.errors
    row = form.save()
    assert row.action(Category.PHONE, Direction.PROMPT) == Action.BLOCK
    assert row.action(Category.PHONE, Direction.RESPONSE) == Action.LOG


def test_the_form_keeps_a_token_within_its_company(personas):
    token = _token(personas.company_b)
    form = PolicyForm(data=_form_data(personas.company_a, token=token.pk))
    assert not form.is_valid()
    assert "token" in form.errors


def test_the_admin_edits_a_policy_in_russian_and_english(superadmin_client, personas):
    row = Policy.objects.create(company=personas.company_a)
    url = reverse("admin:moderation_policy_change", args=[row.pk])
    page = superadmin_client.get(url, HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "Номера телефонов" in page and "промпты" in page
    page = superadmin_client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Phone numbers — prompts" in page
    data = _form_data(personas.company_a, custom_patterns="(broken")
    response = superadmin_client.post(url, data, HTTP_ACCEPT_LANGUAGE="ru")
    assert response.status_code == 200 and "Шаблон 1 не компилируется" in response.content.decode()

"""Ingest (POST JSON), stats (JSON) and a status page (HTML)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from distinct_counter import DistinctCount
from distinct_counter.api import counters
from distinct_counter.models import CounterState
from messaging.models import Message

#: Messages accepted by one POST.
MAX_BATCH = 1000


class MessageForm(forms.ModelForm):
    class Meta:
        model = Message
        fields = ["username", "city", "text"]

    def clean_username(self) -> str:
        username = str(self.cleaned_data["username"]).strip()
        if not username:
            raise forms.ValidationError("must not be blank")
        return username


def _error(message: str, status: int = 400, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


@csrf_exempt  # a JSON API for machines; no cookies are involved
@require_POST
def ingest(request: HttpRequest) -> JsonResponse:
    """POST one message ``{"username", "city", "text"}`` or a list of them."""
    try:
        payload = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(f"the body is not JSON: {exc}")
    items = payload if isinstance(payload, list) else [payload]
    if not items or len(items) > MAX_BATCH:
        return _error(f"send one message or a list of 1 to {MAX_BATCH} messages")
    messages, errors = [], {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors[str(i)] = {"__all__": ["a message is a JSON object"]}
            continue
        form = MessageForm(data=item)
        if form.is_valid():
            messages.append(form.save(commit=False))
        else:
            errors[str(i)] = {
                field: [e["message"] for e in errs]
                for field, errs in form.errors.get_json_data().items()
            }
    if errors:
        return _error("invalid message(s); nothing was saved", errors=errors)
    if len(messages) == 1:
        messages[0].save()
    else:
        Message.objects.bulk_create(messages)
    return JsonResponse({"created": len(messages)}, status=201)


def counts() -> list[dict[str, Any]]:
    """Each counter of Message: its count, where it came from, its state, its last rebuild."""
    states = {s.label: s for s in CounterState.objects.all()}
    rows = []
    for counter in counters("messaging.Message"):
        result = DistinctCount.read(counter.field.name, Message)
        state = states.get(counter.label)
        rows.append(
            {
                "field": counter.field.name,
                "count": result.count,
                "source": result.source,
                "state": result.state,
                "rebuilt_at": state.rebuilt_at.isoformat() if state and state.rebuilt_at else None,
            }
        )
    return rows


@require_GET
def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"messages": Message.objects.count(), "counts": counts()})


@require_GET
def status(request: HttpRequest) -> HttpResponse:
    return render(
        request, "messaging/status.html", {"counts": counts(), "messages": Message.objects.count()}
    )

"""The served OpenAPI schema: request bodies (the routes read raw JSON, so FastAPI cannot infer them),
the one error shape, and what each route answers besides JSON. ``create_app`` (``ml_backend.api.app``)
passes ``request_body`` and ``route_responses`` to every route and installs ``with_components``.
"""

from __future__ import annotations

import re
import warnings

from fastapi import FastAPI

_PROJECT = {"description": "Label Studio's '<project id>.<created timestamp>' (or the id alone)",
            "oneOf": [{"type": "string"}, {"type": "integer"}]}
OPENAPI_SCHEMAS: dict[str, dict] = {
    "Error": {"type": "object", "required": ["status", "message"], "description": "The one error shape of every endpoint",
              "properties": {"status": {"type": "string", "enum": ["error"]}, "message": {"type": "string"},
                             "errors": {"type": "array", "items": {"$ref": "#/components/schemas/TaskError"}}}},
    "TaskError": {"type": "object", "required": ["index", "field", "message"],
                  "properties": {"index": {"type": "integer"}, "task": {}, "field": {"type": "string"},
                                 "status": {"type": "integer", "description": "413 over a memory budget, 503 busy, else 422"},
                                 "message": {"type": "string"}}},
    "SetupRequest": {"type": "object", "required": ["project", "schema"], "properties": {
        "project": _PROJECT,
        "schema": {"type": "string", "description": "the project's label config (XML)"},
        "hostname": {"type": "string", "description": "Label Studio's URL (http or https)"},
        "access_token": {"type": "string", "maxLength": 1024},
        "extra_params": {"description": "the ML backend's extra params; `robustar import` sets robustar_input_size: "
                                        "{size: 8..4096, reason} (the input size it measured, for v0)"}}},
    "SetupResponse": {"type": "object", "required": ["model_version"], "properties": {"model_version": {"type": "string"}}},
    "PredictRequest": {"type": "object", "required": ["tasks", "project"], "properties": {
        "tasks": {"type": "array", "items": {"type": "object", "required": ["data"], "properties": {
            "id": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "data": {"type": "object", "additionalProperties": True,
                     "description": "task data; the image URL under the label config's <Image value=...>"}}}},
        "project": _PROJECT,
        "label_config": {"type": "string"},
        "params": {"type": "object", "properties": {"context": {"type": ["object", "null"]}}}}},
    "PredictResponse": {"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "items": {"type": "object"}}, "model_version": {"type": "string"},
        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/TaskError"}}}},
    "WebhookRequest": {"type": "object", "required": ["action"], "properties": {
        "action": {"type": "string", "description": "START_TRAINING, ANNOTATION_CREATED, ... (others are ignored)"},
        "project": {"oneOf": [{"type": "object", "properties": {"id": {"type": "integer"}}}, {"type": "string"},
                              {"type": "integer"}]}}},
    "WebhookResponse": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "description": "queued, already queued, follow-up, counted, ignored"},
        "job": {"type": "string"}, "action": {"type": "string"}, "reason": {"type": "string"}}},
    "JobStatusRequest": {"type": "object", "required": ["job"], "properties": {"job": {"type": "string", "maxLength": 128}}},
}
_ERROR_TEXT = {400: "malformed body (the message names the field)", 401: "basic auth required (BASIC_AUTH_*)",
               403: "wrong webhook secret", 404: "no such project or file", 408: "request body too slow (HTTP_BODY_TIMEOUT)",
               409: "classes disagree with the served model", 410: "the job is gone", 413: "body or task count too large",
               415: "body not sent as application/json",
               422: "nothing could be predicted / invalid parameters", 503: "training queue (Redis) unavailable or busy"}


def request_body(name: str) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


def route_responses(ok: str | dict | None, *codes: int) -> dict:
    """OpenAPI responses: 200 (a component name, or a ``content`` dict) and the error codes in the one shape."""
    out: dict = {}
    if isinstance(ok, str):
        out[200] = {"description": "OK", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ok}"}}}}
    elif isinstance(ok, dict):
        out[200] = {"description": "OK", "content": ok}
    for code in sorted({401, *codes}):
        out[code] = {"description": _ERROR_TEXT[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def with_components(app: FastAPI):
    """``app.openapi`` with the request/response shapes above registered as components."""
    base = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # GET and HEAD share a route (one id): made unique below
                warnings.filterwarnings("ignore", message="Duplicate Operation ID")
                spec = base()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(OPENAPI_SCHEMAS)
            for path, ops in spec.get("paths", {}).items():
                for method, op in ops.items():
                    op["operationId"] = f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_') or 'root'}"
                    responses = op.get("responses", {})
                    if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                        responses["422"] = route_responses(None, 422)[422]  # our handler answers the one shape
            spec["components"]["schemas"].pop("HTTPValidationError", None)
            spec["components"]["schemas"].pop("ValidationError", None)
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi


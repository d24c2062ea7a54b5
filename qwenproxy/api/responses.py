"""OpenAI's Responses API (Codex CLI, newer OpenAI clients): ``/v1/responses``."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..serving import responses
from ..wire import responses as wire
from .common import json_body, registry

bp = Blueprint("responses", __name__)


@bp.post("/api/responses")
def create() -> Response:
    return responses.responses_turn(registry(), json_body())


@bp.get("/api/responses/<response_id>")
def retrieve(response_id: str) -> Response:
    return jsonify(responses.retrieve(response_id))


@bp.delete("/api/responses/<response_id>")
def delete(response_id: str) -> Response:
    return jsonify(responses.delete(response_id))


@bp.get("/api/responses/<response_id>/input_items")
def input_items(response_id: str) -> Response:
    query = wire.parse(wire.InputItemsQuery, request.args.to_dict())
    return jsonify(responses.list_input_items(response_id, order=query.order, after=query.after, limit=query.limit))

"""The IBM Cloud side the official client talks to before the Runtime API (spec §2.2):
IAM token exchange, Global Search and Global Catalog."""

from __future__ import annotations

from aiohttp import web

from aioruntime import protocol as p

from ..auth import AuthError, authenticate, issue_token
from .keys import CONFIG

PLAN_ID = "aioruntime-emulator-plan"


async def iam_token(request: web.Request) -> web.Response:
    form = await request.post()
    if form.get("grant_type") != p.IAM_GRANT_TYPE or not isinstance(form.get("apikey"), str):
        return web.json_response(
            {
                "errorCode": "BXNIM0109E",
                "errorMessage": "Property missing or empty.",
                "context": {},
            },
            status=400,
        )
    try:
        token, iat, exp = issue_token(request.config_dict[CONFIG], str(form["apikey"]))
    except AuthError as exc:
        return web.json_response(
            {"errorCode": "BXNIM0415E", "errorMessage": str(exc), "context": {}}, status=400
        )
    return web.json_response(
        {
            "access_token": token,
            "refresh_token": "not_supported",
            "token_type": "Bearer",
            "expires_in": exp - iat,
            "expiration": exp,
            "scope": "ibm openid",
        }
    )


async def search(request: web.Request) -> web.Response:
    try:
        principal = authenticate(request.config_dict[CONFIG], request.headers.get("Authorization"))
    except AuthError:
        return web.json_response({"error": "unauthorized"}, status=401)
    items = [
        {
            "crn": crn,
            "name": f"emulator-instance-{i}" if i else "emulator-instance",
            "service_plan_unique_id": PLAN_ID,
            "tags": [],
            # the official client drops items without a truthy doc.extensions
            "doc": {"extensions": {"emulator": True}},
        }
        for i, crn in enumerate(principal.instances)
    ]
    return web.json_response({"items": items, "limit": 100, "search_cursor": None})


async def catalog_entry(request: web.Request) -> web.Response:
    if request.match_info["plan_id"] != PLAN_ID:
        return web.json_response({"message": "not found"}, status=404)
    return web.json_response(
        {
            "id": PLAN_ID,
            "overview_ui": {"en": {"display_name": "Emulator"}},
            "metadata": {"pricing": {"type": "paid"}},
        }
    )


def routes() -> web.RouteTableDef:
    r = web.RouteTableDef()
    r.post(p.IAM_TOKEN)(iam_token)
    r.post(p.SEARCH)(search)
    r.get(p.CATALOG_ENTRY)(catalog_entry)
    return r

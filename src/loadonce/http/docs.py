"""``/docs`` that works without internet: Swagger UI's files come from the app itself (the
swagger-ui-bundle package), as FastAPI's guide to self-hosting them does, instead of from a
CDN a machine behind a firewall cannot reach (the page was blank there)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from loadonce.http.routes import PlainRoute

_DIRECTORY = Path(swagger_ui_path)
# Served from here, open like /docs itself (http/access_keys.py).
ASSETS = "/docs/assets"
# Only these files are served: a name from the path is never joined to a directory.
_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def docs_router(app: FastAPI) -> APIRouter:
    """``/docs``, its OAuth2 redirect, and the files they load; for an app built with
    ``FastAPI(docs_url=None)`` (``create_app`` does)."""
    router = APIRouter(route_class=PlainRoute, include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - docs",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
        )

    @router.get("/docs/oauth2-redirect")
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(ASSETS + "/{name}")
    async def asset(name: str) -> Response:
        media_type = _FILES.get(name)
        if media_type is None:
            return Response(status_code=404)
        # A week: the files change only with the package's version.
        headers = {"Cache-Control": "public, max-age=604800"}
        return FileResponse(_DIRECTORY / name, media_type=media_type, headers=headers)

    return router

"""The API documentation page at `/schema`: Swagger UI, with every file it loads served by us.

A school's intranet may have no internet, so the page fetches nothing from a CDN: its scripts,
stylesheet and favicon ship in the swagger-ui-py wheel and are served under
`/schema/assets/<version>/` (the CSS draws its icons from data: URLs and loads no fonts). The
version is in the path, so a browser may keep the files for good:

    render_plugins = documentation_plugins()   # for OpenAPIConfig(render_plugins=...)
    # /schema and /schema/swagger: the page;  /schema/openapi.json and .yaml: the document
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path

from litestar import Response, get
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.params import FromPath
from litestar.router import Router

from syncengine.errors import ApiError

SCHEMA_PATH = "/schema"
#: The files the page loads, with their content types (litestar adds `charset=utf-8` to text/*).
#: Nothing else of the wheel is served.
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
DISTRIBUTION = "swagger-ui-py"
# A year, and never revalidated: a new Swagger UI comes with a new version, so a new path.
CACHE_CONTROL = "public, max-age=31536000, immutable"
_NOT_INSTALLED = f"{DISTRIBUTION} is not installed: run `pip install -e .` (it ships the /schema page's files)"


def assets_path() -> str:
    """`/schema/assets/<version of swagger-ui-py>`, where the page's files are served."""
    return f"{SCHEMA_PATH}/assets/{_version()}"


def documentation_plugins() -> list[OpenAPIRenderPlugin]:
    """Swagger UI at `/schema` (and `/schema/swagger`), the document as JSON and YAML.

    The other pages litestar offers (ReDoc, RapiDoc, Stoplight Elements, Scalar) load their code
    and fonts from CDNs, so they are not served.
    """
    return [
        SwaggerPage(),
        JsonRenderPlugin(path="/openapi.json"),
        YamlRenderPlugin(path=["/openapi.yaml", "/openapi.yml"]),
    ]


class SwaggerPage(SwaggerRenderPlugin):
    """litestar's Swagger UI page, pointed at the files this service serves itself."""

    def __init__(self) -> None:
        assets = assets_path()
        super().__init__(
            js_url=f"{assets}/swagger-ui-bundle.js",
            css_url=f"{assets}/swagger-ui.css",
            standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
            favicon=f'<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">',
            path=["/", "/swagger"],
        )

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(get(f"/assets/{_version()}/{{name:str}}", include_in_schema=False, sync_to_thread=False)(asset))


def asset(name: FromPath[str]) -> Response[bytes]:
    """One of the page's files, with its content type; cached for good (the path has the version)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(
            404,
            "asset_not_found",
            f"no documentation asset '{name}' (served: {', '.join(ASSETS)}): open the page at {SCHEMA_PATH}",
        )
    return Response(
        _read(name),
        media_type=media_type,
        headers={"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"},
    )


@functools.cache
def _read(name: str) -> bytes:
    return (_static_directory() / name).read_bytes()


def _static_directory() -> Path:
    # find_spec locates the package without importing it (its __init__ loads jinja2 and more).
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError(_NOT_INSTALLED)
    return Path(spec.origin).parent / "static"


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(_NOT_INSTALLED) from None

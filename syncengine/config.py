"""Configuration, from the environment.

| variable                   | default                              |
|----------------------------|--------------------------------------|
| SYNCENGINE_DATABASE_URL    | sqlite:///syncengine.db (in the working directory) |
| SYNCENGINE_ENTITIES        | ./entities.yaml                      |
| SYNCENGINE_MIGRATIONS      | the `migrations/` folder beside the entities file |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///syncengine.db"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    entities: Path = Path("entities.yaml")
    migrations: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        migrations = environ.get("SYNCENGINE_MIGRATIONS")
        return cls(
            database_url=environ.get("SYNCENGINE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            entities=Path(environ.get("SYNCENGINE_ENTITIES") or "entities.yaml"),
            migrations=Path(migrations) if migrations else None,
        )

    @property
    def migrations_dir(self) -> Path:
        return self.migrations or self.entities.parent / "migrations"

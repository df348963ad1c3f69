"""What the feature definitions depend on, taken from the settings or the rendered feature_store.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from kernel.settings import Profile, Settings

SPEC_KEY = "loyalty"  # our section of feature_store.yaml (Feast keeps unknown top-level keys)


@dataclass(frozen=True)
class RepoSpec:
    profile: Profile
    offline_dir: Path  # parquet snapshot tables (embedded)
    table_prefix: str  # PostgreSQL snapshot tables (production)
    snapshot_every_days: int

    @property
    def production(self) -> bool:
        return self.profile is Profile.production

    @classmethod
    def from_settings(cls, settings: Settings) -> RepoSpec:
        return cls(
            profile=settings.profile,
            offline_dir=settings.offline_dir,
            table_prefix=settings.offline_table(""),
            snapshot_every_days=settings.snapshot_every_days,
        )

    def to_yaml_section(self) -> dict:
        return {
            "profile": self.profile.value,
            "offline_dir": str(self.offline_dir),
            "table_prefix": self.table_prefix,
            "snapshot_every_days": self.snapshot_every_days,
        }

    @classmethod
    def from_feature_store_yaml(cls, path: Path) -> RepoSpec:
        """The spec ``loyalty-ml features apply`` rendered beside the definitions (for the ``feast`` CLI)."""
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `loyalty-ml features apply` to render it")
        section = (yaml.safe_load(path.read_text()) or {}).get(SPEC_KEY)
        if not section:
            raise ValueError(f"{path} has no '{SPEC_KEY}' section: re-render it with `loyalty-ml features apply`")
        return cls(
            profile=Profile(section["profile"]),
            offline_dir=Path(section["offline_dir"]),
            table_prefix=section["table_prefix"],
            snapshot_every_days=int(section["snapshot_every_days"]),
        )

"""Server settings: flags override MEMORAY_* environment variables, which override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetentionPolicy(BaseModel):
    """After `after_days`, delete, archive (JSONL the operator can read back) or anonymize
    (personal data redacted, the lesson kept) the memories it selects."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    after_days: float = Field(gt=0)
    action: Literal["delete", "archive", "anonymize"]
    event_types: list[str] | None = None
    tiers: list[str] | None = None
    workspaces: list[str] | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMORAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("~/.memoray")
    shards: int = Field(default=2, ge=1, le=256)
    embedder: Literal["minilm", "hash"] = "minilm"
    address: str | None = None  # join an existing Ray cluster instead of starting one
    replicas: int = Field(default=1, ge=1, le=64)
    embedding_workers: int = Field(default=1, ge=1, le=64)
    embedding_gpus: float = Field(default=0.0, ge=0.0)
    dashboard: bool = True  # Ray's dashboard serves the job API that `ray job submit` uses
    dashboard_port: int = Field(default=8265, ge=0, le=65535)
    # The dashboard agent's HTTP port (Ray's default 52365): `ray job submit` needs this node's
    # agent, which cannot start while another Ray instance on the machine holds the port.
    dashboard_agent_port: int | None = Field(default=None, ge=1, le=65535)

    # Storage. map_size is virtual address space, not disk: LMDB grows the file as it fills.
    map_size_bytes: int = 8 * 1024**3
    durable: bool = True  # fsync every commit; False trades crash safety for speed (benchmarks)
    snapshot_every: int = Field(default=5000, ge=1)  # records between index snapshots

    # Security.
    tokens_file: Path | None = None
    encryption_key: str | None = None
    encryption_key_file: Path | None = None
    insecure: bool = False
    rate_limit_captures_per_minute: int = 100
    rate_limit_requests_per_hour: int = 1000
    rate_limit_bulk_items_per_minute: int = 1000
    rate_limit_principal_requests_per_hour: int | None = None
    rate_limit_tool_requests_per_minute: dict[str, int] | None = None
    rate_limit_enabled: bool = True
    redact_pii: Literal["off", "flag", "redact"] = "redact"

    # Retrieval.
    query_timeout_s: float = 10.0
    hybrid_alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # weight of the vector score
    # Retrieval features (issue 15; benchmarks/locomo.py measures each). Defaults: what the
    # held-out half of LoCoMo liked after tuning on the development half.
    retrieval_fusion: Literal["score", "rrf"] = "score"  # hybrid: weighted scores or RRF
    rrf_k: float = Field(default=60.0, gt=0)
    neighbor_weight: float = Field(default=0.25, ge=0.0, le=4.0)  # best same-session neighbour
    neighbor_turns: int = Field(default=1, ge=1, le=8)  # records either side that count
    neighbor_window_s: float = Field(default=3600.0, ge=0.0)  # ...within this many seconds
    session_weight: float = Field(default=0.5, ge=0.0, le=4.0)  # best hit of the same session
    session_pool: int = Field(default=30, ge=1, le=1000)  # hits per shard the replica re-ranks
    temporal_weight: float = Field(default=0.0, ge=0.0, le=1.0)  # dates in the query vs. time
    temporal_scale_days: float = Field(default=14.0, gt=0)  # how fast proximity decays outside

    # Lifecycle.
    expiry_interval_s: float = Field(default=60.0, gt=0)
    ttl_overrides: dict[str, int | None] = Field(default_factory=dict)  # eventType or tier:<name>
    retention_policies: list[RetentionPolicy] = Field(default_factory=list)

    log_level: str = "INFO"

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def resolved_tokens_file(self) -> Path:
        if self.tokens_file is not None:
            return Path(self.tokens_file).expanduser().resolve()
        return self.resolved_data_dir() / "tokens.json"

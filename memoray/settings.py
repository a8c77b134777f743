"""Server and CLI settings. Precedence, highest first: flags (keyword arguments), MEMORAY_*
environment variables, the config file (MEMORAY_CONFIG, default ~/.memoray/config.toml), then
the defaults below. Every field's description is what docs/configuration.md lists."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_CONFIG = Path("~/.memoray/config.toml")
DEFAULT_URL = "http://127.0.0.1:8000"


class RetentionPolicy(BaseModel):
    """After `after_days`, delete, archive (JSONL the operator can read back) or anonymize
    (personal data redacted, the lesson kept) the memories it selects."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    after_days: float = Field(gt=0)
    action: Literal["delete", "archive", "anonymize"]
    event_types: list[str] | None = None
    tiers: list[str] | None = None
    workspaces: list[str] | None = None


class ConfigFileError(ValueError):
    """The config file is unreadable, not TOML, or names a setting that does not exist."""


def config_path() -> Path:
    return Path(os.environ.get("MEMORAY_CONFIG") or DEFAULT_CONFIG).expanduser()


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The config file's settings (snake_case keys, as in this module); {} when it is absent.
    Unknown keys are an error: a misspelt setting must not be silently ignored."""
    path = path or config_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    known = set(Settings.model_fields)
    unknown = sorted(k for k in data if k.replace("-", "_") not in known)
    if unknown:
        raise ConfigFileError(f"{path}: unknown setting(s) {', '.join(unknown)} "
                              "(see docs/configuration.md)")
    return {k.replace("-", "_"): v for k, v in data.items()}


class _ConfigFileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns everything at once

    def __call__(self) -> dict[str, Any]:
        return read_config_file()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMORAY_", extra="ignore")

    # Server.
    host: str = Field("127.0.0.1", description="bind address; a non-loopback address needs "
                      "tokens (or `insecure`)")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (`/mcp`, `/`, "
                      "`/api`, `/healthz`, `/metrics`)")
    data_dir: Path = Field(Path("~/.memoray"), description="shards, tokens, audit log, archives")
    shards: int = Field(default=2, ge=1, le=256, description="vector shards; fixed for a store "
                        "(records are routed by id hash)")
    embedder: Literal["minilm", "hash"] = Field("minilm", description="`minilm` "
                                                "(all-MiniLM-L6-v2, 384 dims) or `hash` "
                                                "(deterministic, model-free, for tests)")
    address: str | None = Field(None, description="join this Ray cluster instead of starting a "
                                "local one")
    replicas: int = Field(default=1, ge=1, le=64, description="Serve replicas of the app")
    # Cluster mode (on with --address, --replication > 1, or a Serve config): every shard keeps
    # `replication` replicas on distinct storage nodes (see actors/replication.py).
    cluster: bool = Field(False, description="cluster mode even without --address (Serve "
                          "configs set it)")
    replication: int = Field(default=1, ge=1, le=7, description="replicas of every shard, on "
                             "distinct storage nodes (cluster mode)")
    replace_after_s: float = Field(default=300.0, gt=0, description="a shard replica down this "
                                   "long is rebuilt on another storage node")
    store_id: str | None = Field(None, description="set at start from the store's layout")
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        "EveryNode", description="where Serve runs HTTP proxies (HeadOnly when several Ray "
        "nodes share one host's ports)")
    direct_ingress: bool = Field(default=True, description="one local replica serves HTTP "
                                 "itself on --port (Ray Serve's direct ingress), skipping the "
                                 "proxy hop; off, or with several replicas or a cluster, Serve's "
                                 "proxy fronts the replicas")
    max_replicas_per_node: int | None = Field(default=None, ge=1, description="at most this "
                                              "many app replicas per node")
    embedding_workers: int = Field(default=1, ge=1, le=64, description="embedding actors")
    embedding_gpus: float = Field(default=0.0, ge=0.0, description="GPUs per embedding actor")
    embedding_threads: int = Field(default=0, ge=0, le=512, description="CPU threads one "
                                   "embedding worker gives a batch of texts, as that many "
                                   "one-thread model calls on parts of the batch (0: every CPU "
                                   "of its node); a lone query always uses one")
    embedding_runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="what runs MiniLM on the CPU: `onnx` (ONNX Runtime on an export of "
        "the bundled weights, made once into MEMORAY_MODEL_CACHE; a lone text in under half of "
        "torch's time), `torch` (sentence-transformers), or `auto` (onnx, else torch with a "
        "warning); a GPU worker always runs torch")
    query_embedding: Literal["auto", "replica", "worker"] = Field(
        "auto", description="where a retrieve's query is embedded: `replica` (each app replica "
        "loads its own one-thread copy of the model, skipping a round trip to the embedding "
        "worker), `worker`, or `auto` (replica unless embedding_gpus > 0)")
    dashboard: bool = Field(True, description="start Ray's dashboard (it serves the job API "
                            "that `ray job submit`, `make backup` and `make reindex` use)")
    # Ray's fixed default ports (8265, 52365) are taken when another Ray runs on the machine:
    # unset, each is Ray's default when free, else any free port (recorded in DATA_DIR/run.json,
    # where `make backup` / `make reindex` find it).
    dashboard_port: int | None = Field(default=None, ge=0, le=65535, description="Ray "
                                       "dashboard (job API) port; unset: 8265 when free, else "
                                       "a free port")
    dashboard_agent_port: int | None = Field(default=None, ge=1, le=65535, description="the "
                                             "dashboard agent's port; unset: 52365 when free, "
                                             "else a free port")

    # Storage. map_size is virtual address space, not disk: LMDB grows the file as it fills.
    map_size_bytes: int = Field(8 * 1024**3, description="per-shard LMDB ceiling (virtual; "
                                "files grow as they fill); past it writes get STORAGE_FULL")
    durable: bool = Field(True, description="fsync every commit; false trades crash safety for "
                          "speed (benchmarks only)")
    snapshot_every: int = Field(default=5000, ge=1, description="records between index "
                                "snapshots")

    # Security.
    tokens_file: Path | None = Field(None, description="bearer tokens (default "
                                     "DATA_DIR/tokens.json)")
    encryption_key: str | None = Field(None, description="base64 of 32 bytes: AES-256-GCM at "
                                       "rest; `NEW,OLD` during rotation")
    encryption_key_file: Path | None = Field(None, description="a file holding the key")
    insecure: bool = Field(False, description="allow a non-loopback bind without tokens")
    rate_limit_captures_per_minute: int = Field(100, description="captures per minute per "
                                                "session")
    rate_limit_requests_per_hour: int = Field(1000, description="interactive requests per "
                                              "hour per workspace")
    rate_limit_bulk_items_per_minute: int = Field(1000, description="batch items per minute "
                                                  "per workspace (imports)")
    rate_limit_principal_requests_per_hour: int | None = Field(
        None, description="requests per hour per principal (off unless set)")
    rate_limit_tool_requests_per_minute: dict[str, int] | None = Field(
        None, description="per-tool requests per minute per workspace, e.g. "
        "`{\"retrieve-memories\": 600}` (off unless set)")
    rate_limit_enabled: bool = Field(True, description="false turns every rate limit off")
    rate_limit_local: bool = Field(False, description="also limit tokenless requests to a "
                                   "loopback bind (one local user); by default only "
                                   "authenticated or non-loopback use is limited")
    redact_pii: Literal["off", "flag", "redact"] = Field(
        "redact", description="emails, phones, card numbers: `redact`, `flag` or `off` "
        "(secrets are always redacted)")

    # Retrieval.
    query_timeout_s: float = Field(10.0, description="a retrieve slower than this gets "
                                   "QUERY_TIMEOUT")
    hybrid_alpha: float = Field(default=0.5, ge=0.0, le=1.0,
                                description="weight of the vector score in hybrid ranking")
    # Retrieval features (issue 15; benchmarks/locomo.py measures each). Defaults: what LoCoMo's
    # development half chose and its held-out half confirmed.
    retrieval_fusion: Literal["score", "rrf"] = Field(
        "score", description="hybrid fusion: `score` (weighted scores) or `rrf` (reciprocal "
        "rank)")
    rrf_k: float = Field(default=60.0, gt=0, description="the k of reciprocal-rank fusion")
    neighbor_weight: float = Field(default=0.25, ge=0.0, le=4.0, description="share of the "
                                   "best same-session neighbour's score a record also gets")
    neighbor_turns: int = Field(default=1, ge=1, le=8, description="records either side in "
                                "the session that count as neighbours")
    neighbor_window_s: float = Field(default=3600.0, ge=0.0, description="neighbours must be "
                                     "within this many seconds of the record")
    session_weight: float = Field(default=0.5, ge=0.0, le=4.0, description="share of the best "
                                  "hit of its session a hit also gets (0: off)")
    session_pool: int = Field(default=30, ge=1, le=1000, description="hits per shard the "
                              "replica re-ranks when session aggregation is on")
    session_aggregate: Literal["max", "damped", "rrf"] = Field(
        "max", description="how a session scores from its hits: `max` (its best hit), "
        "`damped` (its best `session_depth` hits, each worth `session_damping` times the one "
        "before, averaged with those weights) or `rrf` (reciprocal ranks of its best "
        "`session_depth` hits, summed)")
    session_depth: int = Field(default=3, ge=1, le=50, description="hits of a session that "
                               "count towards its score (`damped`, `rrf`)")
    session_damping: float = Field(default=0.5, ge=0.0, le=1.0, description="weight of each "
                                   "further hit against the one before (`damped`)")
    temporal_weight: float = Field(default=0.15, ge=0.0, le=1.0, description="share of the "
                                   "score a date or event named in the query ('in May', 'before "
                                   "the migration') may take from records far from it (0: off)")
    temporal_scale_days: float = Field(default=14.0, gt=0, description="how fast date "
                                       "proximity decays outside the named span")
    prf_docs: int = Field(default=0, ge=0, le=50, description="lexical query expansion by "
                          "pseudo-relevance feedback: terms taken from this many top BM25 "
                          "hits (0: off)")
    prf_terms: int = Field(default=10, ge=1, le=100, description="expansion terms added")
    prf_weight: float = Field(default=0.5, ge=0.0, le=4.0, description="weight of the "
                              "expansion terms against the query's own in the lexical score")
    vector_prf: float = Field(default=0.0, ge=0.0, le=4.0, description="Rocchio feedback: how "
                              "far the query vector moves towards its first hits (0: off)")
    vector_prf_docs: int = Field(default=3, ge=1, le=50, description="first-pass hits whose "
                                 "centroid the query vector moves towards")

    # Lifecycle.
    expiry_interval_s: float = Field(default=60.0, gt=0, description="how often the expiry "
                                     "worker runs")
    ttl_overrides: dict[str, int | None] = Field(
        default_factory=dict, description="TTL seconds per event type or `tier:<name>`")
    retention_policies: list[RetentionPolicy] = Field(
        default_factory=list, description="`{afterDays, action: delete|archive|anonymize, "
        "eventTypes, tiers, workspaces}` list")

    # Webhooks (docs/webhooks.md).
    webhook_allow_loopback: bool = Field(False, description="webhook targets may be loopback "
                                         "addresses (and plain http to them): tests, a receiver "
                                         "on this machine")
    webhook_allow_http: bool = Field(False, description="webhook targets may use plain http")
    webhook_allow_private: bool = Field(False, description="webhook targets may be private, "
                                        "link-local or unique-local addresses")
    webhook_max_attempts: int = Field(default=8, ge=1, le=100, description="delivery attempts "
                                      "before a delivery goes to the dead-letter list")
    webhook_retry_base_s: float = Field(default=5.0, gt=0, description="first retry delay; "
                                        "doubles per attempt, with jitter")
    webhook_retry_max_s: float = Field(default=3600.0, gt=0, description="longest retry delay")
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120, description="one delivery "
                                     "attempt's time limit")
    webhook_concurrency: int = Field(default=4, ge=1, le=64, description="deliveries in flight "
                                     "per subscription")

    log_level: str = Field("INFO", description="server log level")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="`json` (one object per line), `text`, or `auto`: text on a "
        "terminal, JSON otherwise")
    access_log: bool = Field(False, description="log every HTTP request (Ray Serve access "
                             "lines)")

    # Clients (CLI, hooks): where the running server is.
    url: str | None = Field(None, description="the server the CLI talks to (default "
                            "http://HOST:PORT from these settings)")
    token: str | None = Field(None, description="bearer token the CLI sends")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        return init_settings, env_settings, _ConfigFileSource(settings_cls)

    @model_validator(mode="after")
    def _runtime_fits_the_device(self) -> Settings:
        """Refused here, not in an embedding actor that would die at start on a GPU."""
        if self.embedding_runtime == "onnx" and self.embedding_gpus > 0:
            raise ValueError("embedding_runtime `onnx` runs MiniLM on the CPU; with "
                             "embedding_gpus > 0 use `torch` or `auto`")
        return self

    @property
    def cluster_mode(self) -> bool:
        return self.cluster or self.address is not None or self.replication > 1

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def resolved_tokens_file(self) -> Path:
        if self.tokens_file is not None:
            return Path(self.tokens_file).expanduser().resolve()
        return self.resolved_data_dir() / "tokens.json"

    def client_url(self) -> str:
        """Where clients find the server: `url`, else this host and port (0.0.0.0 -> loopback)."""
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def reference_markdown() -> str:
    """The settings table of docs/configuration.md (`python -m memoray.settings` prints it)."""
    import json

    rows = ["| setting (config.toml key) | environment variable | default | meaning |",
            "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        if isinstance(default, Path | str):
            shown = str(default)
        elif default is None:
            shown = "none"
        else:
            shown = json.dumps(default)
        rows.append(f"| `{name}` | `MEMORAY_{name.upper()}` | `{shown}` | "
                    f"{(field.description or '').replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")

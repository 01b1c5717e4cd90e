"""Job configuration: one YAML file per job, overridden by COLRAY_* variables and --set flags.

Everything is validated here, before Ray starts; `ConfigError` carries one line per bad field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from colray.layout import image_vector_names

ENV_PREFIX = "COLRAY_"
ENV_NESTED_DELIMITER = "__"
API_KEY_ENV = "COLRAY_SINK__API_KEY"
MAX_DENSE_DIMS = 65_535  # Qdrant's limit for one dense vector
DEFAULT_STORE = ".colray/store"  # an Edge store in the current directory, when sink.path is unset


class ConfigError(Exception):
    """A configuration problem found before any work starts; one message line per problem."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


def _absolute(path: str) -> str:
    """Local paths made absolute here, in the driver: Ray workers may run in another folder."""
    return str(Path(path).expanduser().absolute())


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """Where rows come from and which columns matter."""

    path: str = Field(
        description="Parquet file, directory or glob (local path or fsspec/pyarrow URI); for "
        "format=hf a save_to_disk directory, a local parquet export, or a Hub dataset id."
    )
    format: Literal["parquet", "hf", "pdf"] = Field(
        default="parquet",
        description="parquet | hf | pdf (PDF files: a file, a directory, a glob or a URI; each "
        "page becomes a point).",
    )
    text_column: str | None = Field(
        default=None, description="Column holding the text to embed (with `embed`)."
    )
    image_column: str | None = Field(
        default=None,
        description="Column holding page images (with `image`): an HF Image struct "
        "{bytes, path}, raw bytes, or a file path/URI.",
    )
    document_column: str | None = Field(
        default=None,
        description="Column holding PDF documents (bytes, an HF-style {bytes, path} struct, or "
        "a path/URI) of a parquet or hf source: each page becomes a point.",
    )
    page_text: bool = Field(
        default=False,
        description="Documents: also embed each page's text layer with the text model (`embed`) "
        "into the same point, beside its page vector.",
    )
    id_column: str | None = Field(
        default=None,
        description="Column with a stable row key. Without it the key is file + row number.",
    )
    payload_columns: list[str] = Field(
        default_factory=list, description="Columns copied into each point's payload."
    )
    name: str | None = Field(
        default=None,
        description="Namespace for point ids; defaults to the source path. Set it to keep ids "
        "stable when the data moves.",
    )
    split: str = Field(default="train", description="Split to read for format=hf.")
    hf_config: str = Field(default="default", description="Hub dataset config (format=hf).")
    rows_per_block: int = Field(
        default=1024, gt=0, description="Rows per Ray block produced by the reader."
    )

    @field_validator("path")
    @classmethod
    def _absolute_local_path(cls, value: str) -> str:
        # A Hub dataset id ("org/name") is left alone unless such a folder exists here.
        if "://" in value or not (
            Path(value).expanduser().exists() or any(c in value for c in "*?[")
        ):
            return value
        return _absolute(value)

    @model_validator(mode="after")
    def _something_to_embed(self) -> SourceConfig:
        if self.format == "pdf" and (self.document_column or self.text_column or self.image_column):
            raise ValueError(
                "format=pdf reads whole PDF files: leave text_column, image_column and "
                "document_column unset (document_column is for PDFs inside parquet/hf rows)"
            )
        if self.documents and (self.text_column or self.image_column):
            raise ValueError(
                "source.document_column: a document source embeds its pages (and with "
                "page_text their text); leave text_column and image_column unset"
            )
        if not self.documents and not self.text_column and not self.image_column:
            raise ValueError(
                "set source.text_column, source.image_column or both (or format=pdf, or "
                "document_column for PDFs in a column)"
            )
        if self.page_text and not self.documents:
            raise ValueError("source.page_text: only for documents (format=pdf or document_column)")
        if self.embeds_pages and "rows_per_block" not in self.model_fields_set:
            self.rows_per_block = IMAGE_ROWS_PER_BLOCK
        return self

    @property
    def documents(self) -> bool:
        """PDF documents, each page one point (not one point per row)."""
        return self.format == "pdf" or self.document_column is not None

    @property
    def embeds_text(self) -> bool:
        return bool(self.text_column) or (self.documents and self.page_text)

    @property
    def embeds_pages(self) -> bool:
        return bool(self.image_column) or self.documents


# Pages are ~100x larger than text rows; small blocks keep them from piling up in memory.
IMAGE_ROWS_PER_BLOCK = 32


class _Compute(_Section):
    """How much compute an embedding stage gets; shared by the text and the image models."""

    num_actors: int = Field(default=1, gt=0, description="Embedder actors.")
    cpus_per_actor: float = Field(default=1.0, gt=0, description="CPUs reserved per actor.")
    threads_per_actor: int | None = Field(
        default=None,
        gt=0,
        description="Inference threads per actor on CPU (default: the node's cores / num_actors).",
    )
    num_gpus: float = Field(
        default=0.0, ge=0, description="GPUs per actor; fractions share a GPU. 0 runs on CPU."
    )

    def threads(self) -> int:
        """Inference threads per actor: as set, else this node's cores shared among actors."""
        return self.threads_per_actor or max(1, (os.cpu_count() or 1) // self.num_actors)


class EmbedConfig(_Compute):
    """Which model embeds the text and how much compute it gets."""

    model: str = Field(
        default="minilm-token",
        description="A name from `colray models`, a local model directory, or a Hub id.",
    )
    profile: Literal["token", "colbert"] | None = Field(
        default=None, description="Token-model recipe; inferred from the model when unset."
    )
    vector_name: str = Field(default="text", description="Named vector in Qdrant.")
    batch_size: int = Field(default=32, gt=0, description="Texts per forward pass.")
    rows_per_call: int = Field(
        default=256,
        gt=0,
        description="Rows handed to an embedder actor at once; sorted by length and cut "
        "into forward passes of batch_size.",
    )
    doc_maxlen: int | None = Field(default=None, gt=0, description="Max tokens per document.")
    query_maxlen: int | None = Field(default=None, gt=0, description="Query length (colbert).")
    pool_factor: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Token pooling: store about 1/pool_factor of each document's vectors, "
        "similar tokens merged (PyLate's pool_factor; 1 keeps every token).",
    )
    cache_dir: str | None = Field(
        default=None, description="Where exported ONNX models are cached (~/.cache/colray)."
    )
    first_stage: Literal["muvera", "none"] = Field(
        default="muvera",
        description="muvera: also store each document's MUVERA encoding (one dense vector, "
        "HNSW) and keep the token vectors for reranking only (m=0), so large collections "
        "index fast; queries prefetch on it and rerank by MaxSim. none: token vectors with "
        "HNSW only (small collections).",
    )
    muvera_k_sim: int = Field(default=5, ge=1, le=12, description="MUVERA: 2**k_sim buckets.")
    muvera_dim_proj: int = Field(
        default=16, ge=1, description="MUVERA: dims each bucket is projected to."
    )
    muvera_r_reps: int = Field(default=20, ge=1, description="MUVERA: repetitions.")
    muvera_seed: int = Field(default=42, description="MUVERA: random seed (fastembed's 42).")
    prefetch_limit: int = Field(
        default=1200,
        gt=0,
        description="Query: candidates from the MUVERA first stage to rerank by MaxSim "
        "(measured: 1200 keeps MRR@10 and R@10 within 5% of exact MaxSim at 100k documents, "
        "200 at 10k).",
    )
    datatype: Literal["float32", "float16"] = Field(
        default="float32",
        description="How the vectors are stored: float16 halves the storage (measured: no "
        "loss in ranking).",
    )

    @field_validator("model")
    @classmethod
    def _absolute_model_dir(cls, value: str) -> str:
        return _absolute(value) if Path(value).expanduser().is_dir() else value

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)

    @model_validator(mode="after")
    def _encoding_fits_qdrant(self) -> EmbedConfig:
        size = self.muvera_r_reps * 2**self.muvera_k_sim * self.muvera_dim_proj
        if self.first_stage == "muvera" and size > MAX_DENSE_DIMS:
            raise ValueError(
                f"embed.muvera_*: r_reps x 2**k_sim x dim_proj = {size} dims, more than "
                f"Qdrant's {MAX_DENSE_DIMS} per dense vector"
            )
        return self


class ImageConfig(_Compute):
    """Which ColPali-family model embeds the page images, and the collection layout for them."""

    model: str | None = Field(
        default=None,
        description="A local model directory or a Hub id of a colpali-engine model (ColPali, "
        "ColQwen2, ColQwen2.5, ColQwen3, ColQwen3.5, ColQwen2.5-Omni, ColGemma3, "
        "ColIdefics3/ColSmol, ColModernVBert; `colray models` lists them).",
    )
    vector_name: str = Field(default="page", description="Named vector of the page.")
    batch_size: int = Field(default=4, gt=0, description="Images per forward pass.")
    rows_per_call: int = Field(default=16, gt=0, description="Rows handed to an actor at once.")
    decode_cpus: float = Field(
        default=1.0, gt=0, description="CPUs reserved per image-decoding task."
    )
    max_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Images with more pixels are refused before decoding (bomb guard); PDF "
        "pages with more at the model's scale are refused before drawing.",
    )
    render_dpi: float | None = Field(
        default=None,
        gt=0,
        description="PDF pages are drawn straight onto the grid of the model's pixel budget; "
        "this caps the resolution (DPI) the grid is chosen from below it (fewer patches for "
        "budget models). Models without a budget render at 150 DPI.",
    )
    pooled: bool = Field(
        default=True,
        description="Scale-ready layout: also store the page pooled by rows and by columns "
        "with HNSW for the first stage, and keep the original for reranking only (m=0). "
        "Turn off for small collections.",
    )
    on_disk: bool = Field(default=False, description="Keep the original vectors on disk.")
    binary_quantization: bool = Field(
        default=False, description="Binary-quantize the original vectors (kept in RAM)."
    )
    prefetch_limit: int = Field(
        default=200, gt=0, description="Query: candidates from the pooled vectors to rerank."
    )
    oversampling: float = Field(
        default=2.0, ge=1.0, description="Query: oversampling with binary quantization."
    )
    rescore: bool = Field(default=True, description="Query: rescore quantized candidates.")
    datatype: Literal["float32", "float16"] = Field(
        default="float32", description="How the page vectors are stored (float16: half)."
    )

    @field_validator("model")
    @classmethod
    def _absolute_model_dir(cls, value: str | None) -> str | None:
        return _absolute(value) if value and Path(value).expanduser().is_dir() else value


class SinkConfig(_Section):
    """Where points go: the embedded Qdrant Edge store or a Qdrant server."""

    kind: Literal["edge", "qdrant"] = "edge"
    path: str | None = Field(
        default=None,
        description=f"edge: the store directory (default {DEFAULT_STORE}). qdrant: local-mode "
        "directory (no server).",
    )
    url: str | None = Field(default=None, description="qdrant: the server URL.")
    api_key: SecretStr | None = Field(
        default=None,
        description=f"qdrant: from {API_KEY_ENV} or api_key_file only, never the YAML.",
    )
    api_key_file: Path | None = Field(default=None, description="File holding the API key.")
    collection: str = Field(default="colray", description="Collection name (qdrant).")
    batch_size: int = Field(default=64, gt=0, description="Points per upsert request, at most.")
    max_request_mb: float = Field(
        default=24.0,
        gt=0,
        description="Upserts are also cut by estimated serialized size, below Qdrant's 32 MiB "
        "REST limit with margin.",
    )
    writers: int = Field(
        default=1, gt=0, description="Writer actors (qdrant server only; edge uses one)."
    )
    cpus_per_writer: float = Field(
        default=0.0,
        ge=0,
        description="CPUs each writer actor reserves (they serialize the points); 0 lets them "
        "share a node's CPUs with the embedders.",
    )
    upsert_wait: bool = Field(
        default=True,
        description="qdrant: each upsert is answered once applied (Qdrant's wait=true). false: "
        "once queued in the server's write-ahead log, with one wait=true barrier before "
        "indexing is switched on (README, Retries: exact under faults, no faster here).",
    )
    prefer_grpc: bool = False
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    indexing_threshold_kb: int = Field(
        default=10000,
        ge=0,
        description="Indexing threshold switched on after the load (Qdrant's default 10000).",
    )
    ready_timeout_s: float = Field(
        default=3600.0, gt=0, description="How long to wait for the collection to be ready."
    )
    retry_attempts: int = Field(default=5, ge=1, description="Attempts per transient failure.")
    retry_timeout_s: float = Field(default=120.0, gt=0, description="Retry budget per request.")
    retry_wait_initial_s: float = Field(default=0.5, gt=0, description="First backoff.")
    retry_wait_max_s: float = Field(default=30.0, gt=0, description="Longest backoff.")
    max_failed_batches: int = Field(
        default=5,
        ge=1,
        description="Batches in a row that run out of retries before the run stops (the "
        "server is down); fewer are dead-lettered and retried by the next run.",
    )
    verify_tls: bool = Field(default=True, description="Check the server's TLS certificate.")
    keep_versions: int = Field(
        default=2,
        ge=1,
        description="reindex: versions kept, the live one included (2 keeps one to roll back to).",
    )

    @field_validator("path")
    @classmethod
    def _absolute_store_path(cls, value: str | None) -> str | None:
        return _absolute(value) if value else value

    @field_validator("api_key_file")
    @classmethod
    def _key_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError(f"no such file: {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _check_target(self) -> SinkConfig:
        if self.kind == "edge" and not self.path:
            self.path = _absolute(DEFAULT_STORE)
        if self.kind == "qdrant" and bool(self.url) == bool(self.path):
            raise ValueError("kind=qdrant needs exactly one of sink.url (server) or sink.path")
        return self

    def describe(self) -> dict[str, Any]:
        """The sink as reports and messages show it: where, never credentials."""
        return {
            "kind": self.kind,
            "where": self.location(),
            "collection": self.collection if self.kind == "qdrant" else None,
        }

    @property
    def single_process(self) -> bool:
        """Edge or qdrant-client's local mode: a directory one process may hold at a time."""
        return self.kind == "edge" or self.path is not None

    def name(self) -> str:
        """What metrics call the sink: the collection, or the store's folder name."""
        return self.collection if self.kind == "qdrant" else Path(str(self.path)).name

    def location(self) -> str:
        """The URL or path, without user:password@ or ?api-key=, which would leak credentials."""
        if not self.url:
            return str(self.path)
        parts = urlsplit(self.url)
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        return None


class RunConfig(_Section):
    """Where a run leaves its report and dead letters, and which Ray cluster it uses."""

    dir: str = Field(
        default=".colray/runs",
        validate_default=True,
        description="Parent directory of run folders.",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join; unset starts or joins a local one."
    )
    progress: bool = Field(default=True, description="Show progress bars.")
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="When colray starts Ray itself: serve Ray's Prometheus metrics, colray's "
        "colray_* among them, at http://127.0.0.1:<port>/metrics. On a cluster, its nodes' own "
        "metrics export port serves them (`ray start --metrics-export-port`).",
    )
    max_failed_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="More dead-lettered rows than this share of the rows read ends the run "
        "with exit code 3 (the report and dead letters are still written).",
    )
    executor: Literal["auto", "ray", "local"] = Field(
        default="auto",
        description="Where the stages run. ray: on Ray actors (a cluster, or a local node "
        "colray starts). local: in this process, one block at a time, no Ray at all. auto: "
        "local for a small job (at most run.local_max_rows rows or documents) into a local "
        "store with one embedding actor and no Ray address, GPUs or metrics port, where "
        "Ray's start-up would be most of the run; ray otherwise.",
    )
    local_max_rows: int = Field(
        default=1000,
        ge=0,
        description="The most rows (or documents) a job may have for run.executor=auto to "
        "run it in this process.",
    )

    @field_validator("dir")
    @classmethod
    def _absolute_run_dir(cls, value: str) -> str:
        return _absolute(value)

    @model_validator(mode="after")
    def _local_needs_no_ray(self) -> RunConfig:
        if self.executor == "local" and self.ray_address:
            raise ValueError(
                "run.executor: local runs every stage in this process and joins no Ray "
                "cluster; unset run.ray_address or use ray/auto"
            )
        if self.executor == "local" and self.metrics_port:
            raise ValueError(
                "run.executor: local records no metrics (they leave through Ray's export); "
                "unset run.metrics_port or use ray/auto"
            )
        return self


class Settings(BaseSettings):
    """A whole job. Precedence: --set > COLRAY_* environment > YAML file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    source: SourceConfig
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    sink: SinkConfig = Field(default_factory=lambda: SinkConfig())
    run: RunConfig = Field(default_factory=RunConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_layer = InitSettingsSource(settings_cls, init_kwargs=_yaml_layer.get() or {})
        return (init_settings, env_settings, yaml_layer)

    @model_validator(mode="after")
    def _image_needs_model(self) -> Settings:
        if self.source.embeds_pages and not self.image.model:
            what = "source.image_column is set" if self.source.image_column else "pages are read"
            raise ValueError(f"image.model: required when {what}")
        embedded = {self.source.image_column, self.source.document_column} - {None}
        if embedded & set(self.source.payload_columns):
            raise ValueError(
                "source.payload_columns: the image or document column is embedded, not copied "
                "into payloads (Qdrant payloads are JSON); leave it out"
            )
        both = self.source.embeds_text and self.source.embeds_pages
        if both and self.embed.vector_name in image_vector_names(self.image):
            raise ValueError(
                f"image.vector_name: {self.image.vector_name!r} clashes with "
                f"embed.vector_name {self.embed.vector_name!r}"
            )
        return self


# The YAML layer has to sit below the environment, and pydantic-settings only lets a
# classmethod pick the sources; the loader hands the parsed file over through this.
_yaml_layer: ContextVar[dict[str, Any] | None] = ContextVar("colray_yaml_layer", default=None)


def load_settings(
    config_path: str | os.PathLike[str] | None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the job's settings from a YAML file (or `base`), the environment and --set flags."""
    problems: list[str] = []
    layer: dict[str, Any] = dict(base or {})
    if config_path is not None:
        layer = _deep_merge(layer, _read_yaml(Path(config_path)))
    if _has_key(layer, ("sink", "api_key")):
        problems.append(
            f"sink.api_key: must not be written in a config file; set {API_KEY_ENV} "
            "or sink.api_key_file"
        )
    set_layer: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected dotted.key=value")
            continue
        if key.strip() == "sink.api_key":
            problems.append(
                f"--set sink.api_key: not accepted on the command line (it would show in "
                f"process lists and job metadata); set {API_KEY_ENV} or sink.api_key_file"
            )
            continue
        _set_dotted(set_layer, key.strip(), _parse_override(raw))
    if problems:
        raise ConfigError(problems)
    token = _yaml_layer.set(layer)
    try:
        return Settings(**set_layer)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        _yaml_layer.reset(token)


def _parse_override(raw: str) -> Any:
    """Scalars stay strings for pydantic to coerce ("001" must not become 1); lists parse."""
    text = raw.strip()
    if text[:1] in "[{":
        return yaml.safe_load(text)
    if text in {"null", "~"}:
        return None
    return text


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r}: not found"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([f"config file {str(path)!r}: not valid YAML ({exc})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config file {str(path)!r}: expected a mapping at the top level"])
    return data


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        where = ".".join(loc) or "(config)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc)
        elif err["type"] == "missing":
            message = "required but missing"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in {"missing", "extra_forbidden"} or isinstance(got, dict | SecretStr)
            else f" (got {got!r})"
        )
        if where.endswith("api_key"):
            shown = ""
        lines.append(f"{where}: {message}{shown}{_from_environment(loc)}")
    return lines


def _did_you_mean(loc: list[str]) -> str:
    """`; did you mean 'text_column'?` for a near miss of a known key."""
    import difflib

    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        annotation = model.model_fields.get(part)
        inner = getattr(annotation, "annotation", None)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return ""
        model = inner
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _from_environment(loc: list[str]) -> str:
    """Where a setting came from when it was the environment (a typo there is easy to miss)."""
    name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(loc).upper()
    matches = [key for key in os.environ if key.upper() == name]
    return f" (from the environment variable {matches[0]})" if matches else ""


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def _has_key(data: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True

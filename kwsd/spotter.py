"""The library API: keyword spotting inside your own program.

    from kwsd import KeywordSpotter

    spotter = KeywordSpotter.installed(keywords=["hey computer", "lights off"])
    for det in spotter.detect_file("kitchen.flac"):       # any rate, format, channels
        print(det.keyword, det.start, det.score)

    stream = spotter.create_stream(sample_rate=48000)      # one per audio source
    for block in blocks:                                   # int16 or float32, any size
        for det in stream.accept(block):
            print(det.keyword)

`KeywordSpotter` loads the model once; its streams share the model and its decoder
outputs, and streams with equal keyword lists share the compiled keyword graph, while
every stream keeps its own audio state. The decoding is plain synchronous code: call
`stream.accept` from a worker thread (`asyncio.to_thread`) when an event loop must stay
responsive, as the Wyoming server and the daemon do. Everything a user can get wrong
(a missing model, a keyword the vocabulary cannot spell, an unreadable file) raises a
`kwsd.KwsdError` subclass whose message says what to do.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

from kwsd.backends.base import Backend
from kwsd.backends.loader import load_backend
from kwsd.detection import Detection
from kwsd.engine import Frontend, KeywordStream
from kwsd.errors import KeywordError, ModelError, ModelMissingError
from kwsd.features import SAMPLE_RATE
from kwsd.keywords import (
    KeywordSet,
    KeywordSpec,
    KeywordSpecError,
    Tokenizer,
    compile_keywords,
    load_keyword_file,
    parse_keyword_line,
    parse_keyword_lines,
)
from kwsd.liblog import LibraryLogger
from kwsd.model.bundle import ModelBundle
from kwsd.model.locations import default_models_dir
from kwsd.model.resolve import resolve_model
from kwsd.search import DecoderCache, GraphCache, KeywordSearch, SearchOptions
from kwsd.vad import VadOptions

if TYPE_CHECKING:
    from kwsd.batch import BatchPlan, StreamBatch
    from kwsd.config import ModelSettings, SearchSettings

log = LibraryLogger(__name__)

# What `compile`, `create_stream`, `set_keywords`, ... accept as a keyword list.
KeywordsLike: TypeAlias = (
    str
    | os.PathLike[str]
    | KeywordSpec
    | KeywordSet
    | Iterable[str | KeywordSpec | Mapping[str, object]]
)
Runtime = Literal["auto", "onnx", "coreml"]
Precision = Literal["int8", "fp32"]
ComputeUnits = Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"]

# Distinct keyword lists whose compiled form is kept (a compile tokenises every phrase).
COMPILED_CACHE_SIZE = 32
# `detect_file` feeds the stream in microphone-sized pieces: the streaming path, exactly.
FILE_BLOCK_SAMPLES = SAMPLE_RATE // 10


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """How the model is run.

    `runtime`: "onnx" (ONNX Runtime, everywhere), "coreml" (macOS with the CoreML
    bundle) or "auto" (CoreML when the model is a CoreML bundle on macOS, else ONNX).
    `precision` picks the int8 or fp32 files of a sherpa-onnx model directory.
    `threads`: ONNX Runtime threads per session; 1 suits a small always-on device.
    """

    runtime: Runtime = "auto"
    precision: Precision = "int8"
    threads: int = 1
    coreml_compute_units: ComputeUnits = "all"

    def __post_init__(self) -> None:
        if self.runtime not in ("auto", "onnx", "coreml"):
            raise ValueError(f"runtime {self.runtime!r}: choose auto, onnx or coreml")
        if self.precision not in ("int8", "fp32"):
            raise ValueError(f"precision {self.precision!r}: choose int8 or fp32")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a whole number of at least 1, not {self.threads!r}")


class KeywordSpotter:
    """A loaded keyword-spotting model: compile keyword lists, open streams, scan files.

    Get one from the model you have:

        KeywordSpotter.installed()            # what `kwsd models pull` installed
        KeywordSpotter.installed(download=True)         # ... fetched now if missing
        KeywordSpotter.from_model_dir("~/models/sherpa-onnx-kws-zipformer-...")
        KeywordSpotter.from_assets("/data/kws-assets")  # dev assets (stand-in encoder)

    Each takes `keywords=` (the default list for streams and files), `search=`
    (`SearchOptions`: beam, default threshold and boost, ...) and `backend=`
    (`BackendOptions`: runtime, precision, threads).

    Keywords are English phrases ("turn on the lights"), sherpa-onnx keyword-file lines
    ("▁HE Y ▁COMPUTER :2.0 #0.3 @HEY_COMPUTER"), `KeywordSpec`s, a keyword file's text
    or its path. Then:

        spotter.compile(["hey computer"]).warnings      # check a list before using it
        spotter.detect_file("take.wav")                 # -> list[Detection]
        stream = spotter.create_stream(sample_rate=44100)
        stream.accept(block); stream.set_keywords(["good night"]); stream.finish()

    Thread-safe: any number of streams may run at once in different threads.
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        keywords: KeywordsLike | None = None,
        search: SearchOptions | None = None,
        bundle: ModelBundle | None = None,
        backend_options: BackendOptions | None = None,
        stand_in: bool = False,
    ) -> None:
        """Wrap a backend you built yourself; the classmethods below are the usual way.

        `bundle`, `backend_options` and `stand_in` describe where the backend came
        from (for `label`, logs and reloading in another process); a custom backend,
        e.g. one replaying recorded encoder output, leaves them unset.
        """
        self.backend = backend
        self.tokenizer = tokenizer
        self.search_options = search or SearchOptions()
        self.bundle = bundle
        self.backend_options = backend_options
        self.stand_in = stand_in
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple[KeywordSpec, ...], KeywordSet] = OrderedDict()
        self._graphs = GraphCache()
        self._decoder = DecoderCache(backend)
        self._batch_plans: dict[bool, BatchPlan] = {}
        self.keywords: KeywordSet | None = None if keywords is None else self.compile(keywords)

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_model_dir(
        cls,
        path: str | os.PathLike[str],
        *,
        keywords: KeywordsLike | None = None,
        backend: BackendOptions | None = None,
        search: SearchOptions | None = None,
    ) -> KeywordSpotter:
        """The model in `path`: a sherpa-onnx KWS release directory or a CoreML bundle.

        `path` may also be the directory a model was unpacked or pulled *into*.
        """
        options = backend or BackendOptions()
        bundle = resolve_model(Path(path), backend=options.runtime, precision=options.precision)
        return cls.from_bundle(bundle, keywords=keywords, backend=options, search=search)

    @classmethod
    def installed(
        cls,
        *,
        keywords: KeywordsLike | None = None,
        backend: BackendOptions | None = None,
        search: SearchOptions | None = None,
        download: bool = False,
        models_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> KeywordSpotter:
        """The model `kwsd models pull` installed (in `models_dir`, default: kwsd's).

        With `download=True` a missing model is downloaded and installed there first
        (checked against the pinned checksums; `progress` shows a bar on stderr);
        without it, a missing model raises `ModelMissingError`.
        """
        options = backend or BackendOptions()
        base = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
        try:
            bundle = resolve_model(
                None,
                backend=options.runtime,
                precision=options.precision,
                allow_download=download,
                models_dir=base,
                progress=progress,
            )
        except ModelMissingError:
            if download:
                raise
            raise ModelMissingError(
                f"no kwsd model is installed in {base}: run `kwsd models pull`, or pass "
                "download=True to download it now"
            ) from None
        return cls.from_bundle(bundle, keywords=keywords, backend=options, search=search)

    @classmethod
    def from_assets(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        keywords: KeywordsLike | None = None,
        backend: BackendOptions | None = None,
        search: SearchOptions | None = None,
    ) -> KeywordSpotter:
        """The development model of a kws-assets directory (default: $KWSD_ASSETS).

        The real decoder and joiner with the trained stand-in encoder: it recognises
        generated (espeak-ng) speech, not real voices. For tests and demos on machines
        that cannot fetch the real encoder.
        """
        root = path if path is not None else os.environ.get("KWSD_ASSETS")
        if not root:
            raise ModelError(
                "from_assets needs the kws-assets directory: pass its path or set KWSD_ASSETS"
            )
        options = backend or BackendOptions()
        bundle = resolve_model(
            None, backend=options.runtime, precision=options.precision, assets=Path(root)
        )
        return cls.from_bundle(
            bundle, keywords=keywords, backend=options, search=search, stand_in=True
        )

    @classmethod
    def from_config(
        cls,
        model: ModelSettings,
        search: SearchSettings | None = None,
        *,
        assets: str | os.PathLike[str] | None = None,
        keywords: KeywordsLike | None = None,
        progress: bool = False,
    ) -> KeywordSpotter:
        """The model a kwsd configuration selects, as `kwsd run` and `kwsd detect` load it.

        `model` and `search` are the `[model]` and `[search]` sections of
        `kwsd.config.Settings`, `assets` its `assets` setting. Order: `model.dir`, then
        the assets, then the installed model, then a download if `model.allow_download`.
        Blocking (disk, maybe network): run it in a worker thread from async code.
        """
        bundle = resolve_model(
            model.dir,
            backend=model.backend,
            precision=model.precision,
            allow_download=model.allow_download,
            assets=Path(assets) if assets is not None else None,
            onnx_url=model.onnx_url,
            coreml_repo=model.coreml_repo,
            progress=progress,
        )
        options = BackendOptions(
            runtime=model.backend,
            precision=model.precision,
            threads=model.num_threads,
            coreml_compute_units=model.coreml_compute_units,
        )
        return cls.from_bundle(
            bundle,
            keywords=keywords,
            backend=options,
            search=search_options(search) if search is not None else None,
            stand_in=assets is not None and model.dir is None,
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: ModelBundle,
        *,
        keywords: KeywordsLike | None = None,
        backend: BackendOptions | None = None,
        search: SearchOptions | None = None,
        stand_in: bool = False,
    ) -> KeywordSpotter:
        """Load a bundle already located (`kwsd.model.bundle.open_bundle`, `resolve_model`).

        Picklable as `functools.partial(KeywordSpotter.from_bundle, bundle, ...)`, which
        is how `kwsd eval` has every worker process load its own copy.
        """
        options = backend or BackendOptions()
        if stand_in:
            log.warning(
                "stand_in_encoder",
                message="using the trained stand-in encoder from KWSD_ASSETS with the real "
                "decoder/joiner: it recognises generated (espeak-ng) speech, not real voices; "
                "run `kwsd models pull` on a machine with internet for the real model",
                encoder=str(bundle.encoder),
            )
        loaded = load_backend(
            bundle,
            options.runtime,
            num_threads=options.threads,
            compute_units=options.coreml_compute_units,
        )
        tokenizer = Tokenizer(bundle.tokens, bundle.bpe_model)
        log.info("model_loaded", root=str(bundle.root), layout=bundle.layout, backend=loaded.name)
        return cls(
            loaded,
            tokenizer,
            keywords=keywords,
            search=search,
            bundle=bundle,
            backend_options=options,
            stand_in=stand_in,
        )

    def with_backend(self, backend: Backend) -> KeywordSpotter:
        """This spotter's vocabulary, options and default keywords over another backend.

        For a backend derived from this one (a wrapper that times the encoder, or one
        that replays recorded encoder output through this decoder and joiner). Caches
        start empty: decoder outputs belong to a backend.
        """
        return KeywordSpotter(
            backend,
            self.tokenizer,
            keywords=self.keywords.specs if self.keywords is not None else None,
            search=self.search_options,
            bundle=self.bundle,
            stand_in=self.stand_in,
        )

    def loader(self) -> Callable[[], KeywordSpotter] | None:
        """A picklable function that loads this spotter's model again, e.g. in another
        process (the Wyoming server's decode processes, `kwsd eval`'s workers).

        None for a spotter over a backend built by hand (`with_backend`, a custom
        `Backend`): only a model's files can be loaded again.
        """
        if self.bundle is None or self.backend_options is None:
            return None
        return functools.partial(
            KeywordSpotter.from_bundle,
            self.bundle,
            backend=self.backend_options,
            search=self.search_options,
            stand_in=self.stand_in,
        )

    # ------------------------------------------------------------------- use

    @property
    def label(self) -> str:
        """Short model name for logs and detection payloads."""
        name = self.bundle.root.name if self.bundle is not None else self.backend.name
        return f"{name}{' (stand-in encoder)' if self.stand_in else ''}"

    def prepare(self, keywords: KeywordSet) -> None:
        """Build the search graph of a compiled list now, in the caller's thread.

        A stream swaps lists between two chunks on the audio path; with the graph
        already in this spotter's cache, that swap only picks it up. The daemon's
        registry calls this in its compile thread (a 10,000-keyword graph takes about
        a second to build).
        """
        self._graphs(keywords)

    def compile(self, keywords: KeywordsLike) -> KeywordSet:
        """Tokenise and check a keyword list for this model; `.warnings` says what is weak.

        `keywords`: a phrase or keyword-file line, a keyword file's text (one per
        line, `# ` comments), a path to a keyword file (lines, or a `.json` list), a
        `KeywordSpec`, or a list of those. Raises `KeywordError` naming the entry and
        the fix. Equal lists compile once and return the same `KeywordSet`.
        """
        if isinstance(keywords, KeywordSet):
            return keywords
        specs = _specs(keywords)
        with self._lock:
            cached = self._compiled.get(specs)
            if cached is not None:
                self._compiled.move_to_end(specs)
                return cached
        compiled = compile_keywords(
            specs,
            self.tokenizer,
            self.backend.defaults,
            boost=self.search_options.boost,
            threshold=self.search_options.threshold,
        )
        with self._lock:
            compiled = self._compiled.setdefault(specs, compiled)
            while len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        return compiled

    def create_stream(
        self,
        keywords: KeywordsLike | None = None,
        sample_rate: int = SAMPLE_RATE,
        *,
        vad: VadOptions | None = None,
    ) -> KeywordStream:
        """A new stream of audio at `sample_rate` Hz, spotting `keywords` (default: the
        spotter's). Streams are cheap: open one per audio source or utterance.

        `vad=VadOptions()` puts a voice-activity gate in front of the encoder: in
        silence the encoder rests, which saves most of the CPU of an always-on
        microphone (kwsd/vad.py). Detection times stay seconds since the stream started.
        """
        search = self.create_search(keywords)
        return KeywordStream(self, Frontend(self.backend), search, sample_rate, vad=vad)

    def create_batch(self, *, exact: bool = True, threads: int = 1) -> StreamBatch:
        """A `StreamBatch`: many streams encoded and searched together (a server).

        The first call checks which model parts give each stream the same output in a
        batch as alone, and batches those (`StreamBatch.plan`); with dynamic int8
        quantization the encoder and joiner do not, and run one stream per call.
        `exact=False` batches them anyway: faster, but a stream's scores then shift
        slightly with what the other streams hear. `threads` splits each step's encoder
        work over that many threads (cores); `StreamBatch.close` stops them.
        """
        from kwsd.batch import BatchPlan, StreamBatch

        with self._lock:
            plan = self._batch_plans.get(exact)
        if plan is None:
            plan = BatchPlan.probe(self.backend, exact=exact)
            with self._lock:
                plan = self._batch_plans.setdefault(exact, plan)
            log.debug("batch_plan", exact=exact, plan=str(plan))
        return StreamBatch(self, plan, threads=threads)

    def create_search(self, keywords: KeywordsLike | None = None) -> KeywordSearch:
        """A keyword search over this model's encoder output, sharing the spotter's
        keyword graphs and decoder cache (the stage inside every stream)."""
        return KeywordSearch(
            self.backend,
            self._keywords_or_default(keywords),
            self.search_options,
            graphs=self._graphs,
            decoder=self._decoder,
        )

    @property
    def decoder_cache(self) -> DecoderCache:
        """Decoder outputs by token context, shared by every stream of this spotter."""
        return self._decoder

    def detect_file(
        self, path: str | os.PathLike[str], keywords: KeywordsLike | None = None
    ) -> list[Detection]:
        """Every keyword in an audio file (WAV, FLAC, OGG, ...; any rate; channels mixed)."""
        return list(self.scan_file(path, keywords))

    def scan_file(
        self, path: str | os.PathLike[str], keywords: KeywordsLike | None = None
    ) -> Iterator[Detection]:
        """`detect_file`, one detection at a time as the file is decoded (long recordings).

        The keywords and the file are checked before this returns.
        """
        stream = self.create_stream(keywords)
        from kwsd.audio.file import read_audio  # soundfile: only files need it

        samples = read_audio(Path(path))

        def decode() -> Iterator[Detection]:
            for start in range(0, len(samples), FILE_BLOCK_SAMPLES):
                yield from stream.accept(samples[start : start + FILE_BLOCK_SAMPLES])
            yield from stream.finish()

        return decode()

    def _keywords_or_default(self, keywords: KeywordsLike | None) -> KeywordSet:
        if keywords is not None:
            return self.compile(keywords)
        if self.keywords is None:
            raise KeywordError(
                'no keywords: pass keywords=["hey computer", ...] here or to the '
                "KeywordSpotter constructor"
            )
        return self.keywords


def search_options(settings: SearchSettings) -> SearchOptions:
    """The search options of a configuration's `[search]` section."""
    return SearchOptions(
        beam=settings.beam,
        num_trailing_blanks=settings.num_trailing_blanks,
        auto_reset_seconds=settings.auto_reset_seconds,
        threshold=settings.threshold,
        boost=settings.boost,
    )


def _specs(keywords: KeywordsLike) -> tuple[KeywordSpec, ...]:
    """Any accepted keyword form → KeywordSpecs (the compile cache's key)."""
    if isinstance(keywords, KeywordSpec):
        return (keywords,)
    if isinstance(keywords, str):
        specs = parse_keyword_lines(keywords)
        if not specs:
            raise KeywordError(f'no keyword in {keywords!r}: give a phrase like "hey computer"')
        return tuple(specs)
    if isinstance(keywords, os.PathLike):
        return tuple(load_keyword_file(Path(keywords)))
    if not isinstance(keywords, Iterable):
        raise TypeError(
            "keywords must be a phrase, keyword lines, a keyword file path, a KeywordSpec "
            f"or a list of phrases/KeywordSpecs, not {type(keywords).__name__}"
        )
    specs = []
    for position, entry in enumerate(keywords, 1):
        if isinstance(entry, KeywordSpec):
            specs.append(entry)
        elif isinstance(entry, str):
            specs.append(parse_keyword_line(entry.strip()))
        elif isinstance(entry, Mapping):
            try:
                specs.append(KeywordSpec.from_mapping(entry))
            except KeywordSpecError as exc:
                raise KeywordError(f"keyword {position} ({dict(entry)!r:.80}): {exc}") from None
        else:
            raise TypeError(
                f"keyword entries must be phrases (str) or KeywordSpec, not {type(entry).__name__}"
            )
    return tuple(specs)

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreserveColor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESERVE_COLOR_NONE: _ClassVar[PreserveColor]
    PRESERVE_COLOR_CORAL: _ClassVar[PreserveColor]
    PRESERVE_COLOR_LUMINANCE: _ClassVar[PreserveColor]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]

class RefineInit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFINE_INIT_ADAIN: _ClassVar[RefineInit]
    REFINE_INIT_CONTENT: _ClassVar[RefineInit]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_LBFGS: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]

class Temporal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEMPORAL_DEFAULT: _ClassVar[Temporal]
    TEMPORAL_NONE: _ClassVar[Temporal]
    TEMPORAL_SMOOTH: _ClassVar[Temporal]
    TEMPORAL_FLOW: _ClassVar[Temporal]
    TEMPORAL_SMOOTH_FLOW: _ClassVar[Temporal]
PRESERVE_COLOR_NONE: PreserveColor
PRESERVE_COLOR_CORAL: PreserveColor
PRESERVE_COLOR_LUMINANCE: PreserveColor
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat
REFINE_INIT_ADAIN: RefineInit
REFINE_INIT_CONTENT: RefineInit
OPTIMIZER_LBFGS: Optimizer
OPTIMIZER_ADAM: Optimizer
TEMPORAL_DEFAULT: Temporal
TEMPORAL_NONE: Temporal
TEMPORAL_SMOOTH: Temporal
TEMPORAL_FLOW: Temporal
TEMPORAL_SMOOTH_FLOW: Temporal

class Style(_message.Message):
    __slots__ = ("image", "style_id", "weight", "mask", "label", "alpha")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STYLE_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    style_id: str
    weight: float
    mask: bytes
    label: int
    alpha: float
    def __init__(self, image: _Optional[bytes] = ..., style_id: _Optional[str] = ..., weight: _Optional[float] = ..., mask: _Optional[bytes] = ..., label: _Optional[int] = ..., alpha: _Optional[float] = ...) -> None: ...

class StylizeRequest(_message.Message):
    __slots__ = ("content", "styles", "alpha", "preserve_color", "mask", "content_size", "style_size", "format", "quality", "refine_steps", "refine_init", "content_weight", "style_weight", "tv_weight", "refine_size", "optimizer", "labels", "keep_exif", "preset")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_COLOR_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    STYLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    REFINE_INIT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STYLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REFINE_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KEEP_EXIF_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    styles: _containers.RepeatedCompositeFieldContainer[Style]
    alpha: float
    preserve_color: PreserveColor
    mask: bytes
    content_size: int
    style_size: int
    format: ImageFormat
    quality: int
    refine_steps: int
    refine_init: RefineInit
    content_weight: float
    style_weight: float
    tv_weight: float
    refine_size: int
    optimizer: Optimizer
    labels: bytes
    keep_exif: bool
    preset: str
    def __init__(self, content: _Optional[bytes] = ..., styles: _Optional[_Iterable[_Union[Style, _Mapping]]] = ..., alpha: _Optional[float] = ..., preserve_color: _Optional[_Union[PreserveColor, str]] = ..., mask: _Optional[bytes] = ..., content_size: _Optional[int] = ..., style_size: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., quality: _Optional[int] = ..., refine_steps: _Optional[int] = ..., refine_init: _Optional[_Union[RefineInit, str]] = ..., content_weight: _Optional[float] = ..., style_weight: _Optional[float] = ..., tv_weight: _Optional[float] = ..., refine_size: _Optional[int] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., labels: _Optional[bytes] = ..., keep_exif: _Optional[bool] = ..., preset: _Optional[str] = ...) -> None: ...

class StylizeEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: StylizeResponse
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[StylizeResponse, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "steps", "loss", "elapsed_ms")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    step: int
    steps: int
    loss: float
    elapsed_ms: float
    def __init__(self, step: _Optional[int] = ..., steps: _Optional[int] = ..., loss: _Optional[float] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class VideoOptions(_message.Message):
    __slots__ = ("styles", "alpha", "preserve_color", "mask", "content_size", "style_size", "format", "quality", "temporal", "temporal_strength", "labels", "preset")
    STYLES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_COLOR_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    STYLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    styles: _containers.RepeatedCompositeFieldContainer[Style]
    alpha: float
    preserve_color: PreserveColor
    mask: bytes
    content_size: int
    style_size: int
    format: ImageFormat
    quality: int
    temporal: Temporal
    temporal_strength: float
    labels: bytes
    preset: str
    def __init__(self, styles: _Optional[_Iterable[_Union[Style, _Mapping]]] = ..., alpha: _Optional[float] = ..., preserve_color: _Optional[_Union[PreserveColor, str]] = ..., mask: _Optional[bytes] = ..., content_size: _Optional[int] = ..., style_size: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., quality: _Optional[int] = ..., temporal: _Optional[_Union[Temporal, str]] = ..., temporal_strength: _Optional[float] = ..., labels: _Optional[bytes] = ..., preset: _Optional[str] = ...) -> None: ...

class VideoRequest(_message.Message):
    __slots__ = ("options", "frame")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    options: VideoOptions
    frame: bytes
    def __init__(self, options: _Optional[_Union[VideoOptions, _Mapping]] = ..., frame: _Optional[bytes] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("image", "index", "width", "height", "format", "timings")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    index: int
    width: int
    height: int
    format: ImageFormat
    timings: Timings
    def __init__(self, image: _Optional[bytes] = ..., index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "inference_ms", "prepare_ms", "encode_ms", "batch_size", "refine_ms", "refine_steps")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPARE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFINE_MS_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    inference_ms: float
    prepare_ms: float
    encode_ms: float
    batch_size: int
    refine_ms: float
    refine_steps: int
    def __init__(self, queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., prepare_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., refine_ms: _Optional[float] = ..., refine_steps: _Optional[int] = ...) -> None: ...

class StylizeResponse(_message.Message):
    __slots__ = ("image", "width", "height", "format", "timings", "request_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    width: int
    height: int
    format: ImageFormat
    timings: Timings
    request_id: str
    def __init__(self, image: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RegisterStyleRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    def __init__(self, image: _Optional[bytes] = ...) -> None: ...

class RegisterStyleResponse(_message.Message):
    __slots__ = ("style_id", "width", "height")
    STYLE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    style_id: str
    width: int
    height: int
    def __init__(self, style_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ListStylesRequest(_message.Message):
    __slots__ = ("thumbnail_size",)
    THUMBNAIL_SIZE_FIELD_NUMBER: _ClassVar[int]
    thumbnail_size: int
    def __init__(self, thumbnail_size: _Optional[int] = ...) -> None: ...

class LibraryStyle(_message.Message):
    __slots__ = ("name", "style_id", "width", "height", "thumbnail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STYLE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    style_id: str
    width: int
    height: int
    thumbnail: bytes
    def __init__(self, name: _Optional[str] = ..., style_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., thumbnail: _Optional[bytes] = ...) -> None: ...

class Preset(_message.Message):
    __slots__ = ("name", "styles", "alpha", "preserve_color")
    class Part(_message.Message):
        __slots__ = ("style", "weight")
        STYLE_FIELD_NUMBER: _ClassVar[int]
        WEIGHT_FIELD_NUMBER: _ClassVar[int]
        style: str
        weight: float
        def __init__(self, style: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_COLOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    styles: _containers.RepeatedCompositeFieldContainer[Preset.Part]
    alpha: float
    preserve_color: PreserveColor
    def __init__(self, name: _Optional[str] = ..., styles: _Optional[_Iterable[_Union[Preset.Part, _Mapping]]] = ..., alpha: _Optional[float] = ..., preserve_color: _Optional[_Union[PreserveColor, str]] = ...) -> None: ...

class ListStylesResponse(_message.Message):
    __slots__ = ("styles", "presets")
    STYLES_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    styles: _containers.RepeatedCompositeFieldContainer[LibraryStyle]
    presets: _containers.RepeatedCompositeFieldContainer[Preset]
    def __init__(self, styles: _Optional[_Iterable[_Union[LibraryStyle, _Mapping]]] = ..., presets: _Optional[_Iterable[_Union[Preset, _Mapping]]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_pixels", "max_content_side", "default_style_size", "max_styles", "max_message_bytes", "style_registry_size", "max_video_frames", "max_video_streams", "video_window", "max_refine_steps", "max_refine_jobs", "max_refine_queue", "tile_threshold_pixels", "tile_size", "tile_halo", "tile_memory_bytes", "max_refine_pixels", "max_calls_per_caller", "max_concurrent_rpcs", "max_concurrent_streams", "message_timeout_s")
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTENT_SIDE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STYLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_STYLES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STYLE_REGISTRY_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_STREAMS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_REFINE_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_REFINE_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TILE_THRESHOLD_PIXELS_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_HALO_FIELD_NUMBER: _ClassVar[int]
    TILE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REFINE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_CALLS_PER_CALLER_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_RPCS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    max_pixels: int
    max_content_side: int
    default_style_size: int
    max_styles: int
    max_message_bytes: int
    style_registry_size: int
    max_video_frames: int
    max_video_streams: int
    video_window: int
    max_refine_steps: int
    max_refine_jobs: int
    max_refine_queue: int
    tile_threshold_pixels: int
    tile_size: int
    tile_halo: int
    tile_memory_bytes: int
    max_refine_pixels: int
    max_calls_per_caller: int
    max_concurrent_rpcs: int
    max_concurrent_streams: int
    message_timeout_s: float
    def __init__(self, max_pixels: _Optional[int] = ..., max_content_side: _Optional[int] = ..., default_style_size: _Optional[int] = ..., max_styles: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., style_registry_size: _Optional[int] = ..., max_video_frames: _Optional[int] = ..., max_video_streams: _Optional[int] = ..., video_window: _Optional[int] = ..., max_refine_steps: _Optional[int] = ..., max_refine_jobs: _Optional[int] = ..., max_refine_queue: _Optional[int] = ..., tile_threshold_pixels: _Optional[int] = ..., tile_size: _Optional[int] = ..., tile_halo: _Optional[int] = ..., tile_memory_bytes: _Optional[int] = ..., max_refine_pixels: _Optional[int] = ..., max_calls_per_caller: _Optional[int] = ..., max_concurrent_rpcs: _Optional[int] = ..., max_concurrent_streams: _Optional[int] = ..., message_timeout_s: _Optional[float] = ...) -> None: ...

class Batching(_message.Message):
    __slots__ = ("max_batch_size", "max_batch_delay_ms", "max_queue", "prepare_workers", "max_queue_per_caller")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    PREPARE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_PER_CALLER_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue: int
    prepare_workers: int
    max_queue_per_caller: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_batch_delay_ms: _Optional[float] = ..., max_queue: _Optional[int] = ..., prepare_workers: _Optional[int] = ..., max_queue_per_caller: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model", "arch_version", "weights_version", "decoder_meta_json", "device", "dtype", "limits", "batching", "server_version", "registered_styles", "default_temporal", "default_temporal_strength", "backend", "precision", "cpu_model", "cpu_features", "input_formats", "library_styles", "features")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECODER_META_JSON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_STYLES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TEMPORAL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TEMPORAL_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    INPUT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_STYLES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    model: str
    arch_version: int
    weights_version: str
    decoder_meta_json: str
    device: str
    dtype: str
    limits: Limits
    batching: Batching
    server_version: str
    registered_styles: int
    default_temporal: Temporal
    default_temporal_strength: float
    backend: str
    precision: str
    cpu_model: str
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    input_formats: _containers.RepeatedScalarFieldContainer[str]
    library_styles: int
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., arch_version: _Optional[int] = ..., weights_version: _Optional[str] = ..., decoder_meta_json: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., batching: _Optional[_Union[Batching, _Mapping]] = ..., server_version: _Optional[str] = ..., registered_styles: _Optional[int] = ..., default_temporal: _Optional[_Union[Temporal, str]] = ..., default_temporal_strength: _Optional[float] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_features: _Optional[_Iterable[str]] = ..., input_formats: _Optional[_Iterable[str]] = ..., library_styles: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

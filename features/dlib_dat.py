"""dlib's face ResNet weights file (`dlib_face_recognition_resnet_model_v1.dat`) -> numpy arrays.

Reads dlib's own serialization format (dlib/serialize.h, the dnn layers' `serialize`
functions, dlib/dnn/core.h for how a network nests its layers), without dlib:
- integers: one control byte (bit 7: negative, bits 0-3: byte count), then that many
  little-endian bytes; floats and doubles: two such integers, mantissa and exponent
  (value = mantissa * 2**exponent); bools: the character '0' or '1'; strings: an
  integer length then the bytes;
- tensors: version 2, four integer dimensions (num_samples, k, nr, nc: NCHW), then
  the values as little-endian float32;
- a network: the loss layer, then one version integer per layer from the outermost to
  the innermost, the input layer, then each layer's details and its cached state from
  the innermost to the outermost (tag and skip layers have no body).

`read_network` checks every layer against the architecture that dlib's
`dnn_face_recognition_ex.cpp` (and its Python binding) declares, so a file of another
shape is refused instead of silently misread.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The network of dlib's face recognition example (anet_type), from the input outwards:
# con 7x7/2 32, affine, relu, max_pool 3x3/2, then residual units (filters, down-sampling),
# avg_pool_everything, fc_no_bias 128.
STAGES: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)
INPUT_SIZE = 150


class DatFormatError(ValueError):
    """The file is not the network this reader knows."""


@dataclass
class Conv:
    filters: np.ndarray   # (out, in, rows, cols), dlib's layout
    bias: np.ndarray      # (out,)
    stride: int
    padding: int


@dataclass
class Affine:
    gamma: np.ndarray     # (channels,): output = gamma * x + beta, per channel
    beta: np.ndarray


@dataclass
class Residual:
    """relu(add(block(x), shortcut)): block = affine(con 3x3/1(relu(affine(con 3x3/stride(x)))));
    shortcut = x, or with `down` avg_pool 2x2/2 of x (dlib's add pads the smaller tensor with zeros)."""
    conv1: Conv
    affine1: Affine
    conv2: Conv
    affine2: Affine
    down: bool


@dataclass
class Network:
    input_mean: tuple[float, float, float]  # RGB values subtracted before dividing by 256
    stem_conv: Conv
    stem_affine: Affine                      # then relu and max pool 3x3/2 without padding
    units: list[Residual] = field(default_factory=list)
    fc: np.ndarray | None = None              # (inputs, outputs): embedding = features @ fc


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise DatFormatError(f"file ends at byte {len(self.data)} inside a value at {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise DatFormatError(f"bad integer control byte {control:#x} at {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def read_float(self) -> float:
        mantissa, exponent = self.read_int(), self.read_int()
        if exponent >= 32000:  # dlib's codes for inf, -inf, nan
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(np.ldexp(float(mantissa), exponent))

    def read_bool(self) -> bool:
        ch = bytes(self._take(1))
        if ch not in (b"0", b"1"):
            raise DatFormatError(f"bad bool {ch!r} at {self.pos - 1}")
        return ch == b"1"

    def read_str(self) -> str:
        return bytes(self._take(self.read_int())).decode("latin-1")

    def expect(self, *versions: str) -> str:
        at = self.pos
        version = self.read_str()
        if version not in versions:
            raise DatFormatError(f"expected {' or '.join(versions)} at byte {at}, found {version!r}")
        return version

    def expect_int(self, what: str, *allowed: int) -> int:
        value = self.read_int()
        if value not in allowed:
            raise DatFormatError(f"unexpected {what} {value} at byte {self.pos}")
        return value

    def tensor(self) -> np.ndarray:
        self.expect_int("tensor version", 2)
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        self.expect_int("alias_tensor version", 1)
        return tuple(self.read_int() for _ in range(4))


def _con(r: _Reader, filters: int, size: int, stride: int) -> Conv:
    version = r.expect("con_4", "con_5", "con_6")
    params = r.tensor().reshape(-1)
    num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (r.read_int() for _ in range(7))
    shape, bias_shape = r.alias(), r.alias()
    for _ in range(4):  # learning rate and weight decay multipliers
        r.read_float()
    use_bias = r.read_bool() if version in ("con_5", "con_6") else True
    if version == "con_6" and r.read_bool():
        raise DatFormatError("a convolution with a fused relu is not part of this network")
    # dlib's default padding: none for a strided convolution, size // 2 otherwise
    padding = 0 if stride != 1 else size // 2
    if (num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x) != (filters, size, size, stride, stride,
                                                                    padding, padding):
        raise DatFormatError(f"convolution {num_filters} {nr}x{nc}/{stride_y} pad {pad_y}: expected "
                             f"{filters} {size}x{size}/{stride} pad {padding}")
    n_weights = int(np.prod(shape))
    if shape[0] != filters or shape[2:] != (size, size) or not use_bias or bias_shape != (1, filters, 1, 1) \
            or params.size != n_weights + filters:
        raise DatFormatError(f"convolution parameters {shape} + {bias_shape} do not fit {params.size} values")
    return Conv(params[:n_weights].reshape(shape), params[n_weights:].copy(), stride, padding)


def _affine(r: _Reader, channels: int) -> Affine:
    version = r.expect("affine_", "affine_2")
    params = r.tensor().reshape(-1)
    gamma, beta = r.alias(), r.alias()
    mode = r.read_int()
    if version == "affine_2" and r.read_bool():
        raise DatFormatError("a disabled affine layer is not part of this network")
    if mode != 0 or gamma != (1, channels, 1, 1) or beta != gamma or params.size != 2 * channels:
        raise DatFormatError(f"affine layer mode {mode}, gamma {gamma}: expected per-channel for {channels}")
    return Affine(params[:channels].copy(), params[channels:].copy())


def _relu(r: _Reader) -> None:
    if r.expect("relu_", "relu_2") == "relu_2" and r.read_bool():
        raise DatFormatError("a disabled relu is not part of this network")


def _pool(r: _Reader, kind: str, window: int, stride: int) -> None:
    r.expect(kind)
    got = tuple(r.read_int() for _ in range(6))
    padding = 0 if stride != 1 else window // 2
    if got != (window, window, stride, stride, padding, padding):
        raise DatFormatError(f"{kind} {got}: expected {window}x{window}/{stride} pad {padding}")


def _add_prev(r: _Reader) -> None:
    r.expect("add_prev_")


def _layer_state(r: _Reader, version: int, innermost: bool) -> None:
    """What add_layer writes after a layer's details: flags and cached tensors (unused here)."""
    for _ in range(3):
        r.read_bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if innermost:
        r.tensor()  # grad_final
        if version >= 3:
            r.read_int()  # sample expansion factor
    elif version >= 2:
        r.tensor()  # params_grad


def _wrappers() -> list[str]:
    """The network's nesting from the outermost layer to the innermost: 'layer', 'tag' or 'skip'."""
    out = ["layer", "layer"]  # fc_no_bias, avg_pool_everything
    for _filters, down in reversed(STAGES):
        # ares      = relu<add_prev1<affine<con<relu<affine<con<tag1<x>>>>>>>>
        # ares_down = relu<add_prev2<avg_pool<skip1<tag2<affine<con<relu<affine<con<tag1<x>>>>>>>>>>>
        out += ["layer", "layer"] + (["layer", "skip", "tag"] if down else []) + ["layer"] * 5 + ["tag"]
    out += ["layer"] * 4  # max_pool, relu, affine, con (whose subnet is the input layer)
    return out


def _read_versions(r: _Reader) -> list[int]:
    """The loss layer, then every wrapper's version, outermost first. -> the versions of the layers."""
    r.expect_int("loss layer version", 1)
    if r.expect("loss_metric_", "loss_metric_2") == "loss_metric_2":
        r.read_float(), r.read_float()  # margin, distance threshold (training only)
    wrappers = _wrappers()
    versions = []
    for i, kind in enumerate(wrappers):
        if kind == "layer":
            versions.append(r.expect_int("layer version", *((2, 3) if i == len(wrappers) - 1 else (1, 2))))
        else:
            r.expect_int(f"{kind} layer version", 1)
    return versions


def _read_fc(r: _Reader) -> np.ndarray:
    """The last layer, fc_no_bias 128: its (inputs, 128) weights."""
    version = r.expect("fc_2", "fc_3")
    outputs, inputs = r.read_int(), r.read_int()
    params = r.tensor().reshape(-1)
    weights, _bias = r.alias(), r.alias()
    bias_mode = r.read_int()  # 1: FC_NO_BIAS
    for _ in range(4):  # learning rate and weight decay multipliers
        r.read_float()
    if version == "fc_3":
        r.read_bool()  # use_bias: fc_no_bias has none either way
    if (outputs, inputs, weights, bias_mode) != (128, STAGES[-1][0], (inputs, outputs, 1, 1), 1) \
            or params.size != inputs * outputs:
        raise DatFormatError(f"fc layer {inputs}->{outputs} {weights} mode {bias_mode}: expected fc_no_bias 128")
    return params.reshape(inputs, outputs).copy()


def read_network(data: bytes) -> Network:
    """Parse the bytes of dlib's face recognition ResNet file."""
    r = _Reader(data)
    versions = _read_versions(r)
    # the input layer
    r.expect("input_rgb_image_sized")
    mean = (r.read_float(), r.read_float(), r.read_float())
    if (r.read_int(), r.read_int()) != (INPUT_SIZE, INPUT_SIZE):
        raise DatFormatError(f"the input is not {INPUT_SIZE}x{INPUT_SIZE}")
    # then the layers' bodies, innermost first
    layer_versions = iter(reversed(versions))
    done: list = []

    def body(parse, *args):
        value = parse(r, *args)
        _layer_state(r, next(layer_versions), innermost=not done)  # the innermost: the input's add_layer
        done.append(parse)
        return value

    stem_conv = body(_con, 32, 7, 2)
    stem_affine = body(_affine, 32)
    body(_relu)
    body(_pool, "max_pool_2", 3, 2)
    net = Network(mean, stem_conv, stem_affine)
    for filters, down in STAGES:
        conv1 = body(_con, filters, 3, 2 if down else 1)
        affine1 = body(_affine, filters)
        body(_relu)
        conv2 = body(_con, filters, 3, 1)
        affine2 = body(_affine, filters)
        if down:
            body(_pool, "avg_pool_2", 2, 2)
        body(_add_prev)
        body(_relu)
        net.units.append(Residual(conv1, affine1, conv2, affine2, down))
    body(_pool, "avg_pool_2", 0, 1)  # avg_pool_everything: the window is the whole input
    net.fc = _read_fc(r)
    _layer_state(r, next(layer_versions), innermost=False)
    assert next(layer_versions, None) is None and len(done) == len(versions) - 1
    if r.pos != len(data):
        raise DatFormatError(f"{len(data) - r.pos} bytes left after the network")
    return net



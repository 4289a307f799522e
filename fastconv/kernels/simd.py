"""Vector registers as Numba values: the types and intrinsics the vector kernels are written with.

Numba keeps accumulators of a loop in registers only as scalar reductions, so a
direct-loop convolution written with scalars pays a horizontal reduction per output.
Here a value of type :data:`Vec` is an LLVM vector (``<16 x float>`` in a 512-bit
register, ``<8 x float>`` in a 256-bit one, ``<8 x double>`` / ``<4 x double>``); Numba keeps
locals in ``alloca`` slots, which LLVM promotes to registers like scalars, so outer-product
accumulators stay in vector registers across a whole receptive field.

The register width is a compile-time argument: kernels take a :class:`Width` (``W512``
or ``W256``, chosen by :mod:`fastconv.plan` from the CPU) and pass it to :func:`vzero`;
the lane count follows from the width and the array's dtype, so one kernel source
serves float32 and float64 on AVX-512 and AVX2 machines (and any CPU LLVM targets,
where LLVM splits or emulates the vectors: correct, if slower).

Intrinsics (``a`` is a 1-D C-contiguous float array; nothing is bounds-checked: the
callers guarantee every index):

- :func:`vzero(width, a)`: the zero vector of ``a``'s dtype;
- :func:`vload(v, a, i)`: ``a[i:i+L]`` (``v`` gives the vector type);
- :func:`vstore(a, i, v)`: ``a[i:i+L] = v``;
- :func:`vfmab(acc, w, a, i)`: ``acc + w * a[i]`` (the scalar broadcast; one FMA with a
  broadcast memory operand on AVX-512);
- :func:`vfma(acc, u, v)`: ``acc + u * v`` lane by lane (one FMA; the depthwise kernels);
- :func:`vadd(u, v)`, :func:`vsub(u, v)`, :func:`vmax(u, v)`;
- :func:`vsplat(v, x)`: the scalar ``x`` in every lane of a vector of ``v``'s type;
- :func:`vstream(a, i, v)`: ``a[i:i+L] = v`` by a non-temporal store (the line goes to memory, not into
  the cache); ``&a[i]`` must be a multiple of the vector's size (:func:`misaligned`), and the stores
  of a job must be followed by :func:`stream_fence` before another thread reads them;
- :func:`misaligned(v, a, i)`: how many elements from ``a[i]`` to the next address that is a multiple of
  the size of ``v`` (0 when ``&a[i]`` is one);
- :func:`stream_fence()`: a store fence (``sfence`` on x86), ordering the non-temporal stores before it;
- :func:`vmask(v, m)`: ``v`` where ``m`` is non-zero, else 0 (a select: an infinity or NaN of ``v``
  in a masked-off lane is dropped, not multiplied by 0);
- :func:`vloadz(v, a, i, bits)`: ``a[i + l]`` in the lanes ``l`` whose bit is set in the integer ``bits``,
  0 in the others, which are not read (a masked load: the index may point outside ``a`` there);
- :func:`vstorez(a, i, v, bits)`: ``a[i + l] = v[l]`` for the lanes set in ``bits`` only (a masked store);
- :func:`vevens(u, v)`, :func:`vodds(u, v)`: the even (odd) lanes of ``u`` followed by those of ``v``
  (``a[i:i+2L:2]`` and ``a[i+1:i+2L:2]`` from two loads);
- :func:`vziplo(u, v)`, :func:`vziphi(u, v)`: ``u[0], v[0], u[1], v[1], ...`` from the low (high) halves
  of ``u`` and ``v``: the inverse of :func:`vevens` (two columns phases written back as one row);
- :func:`lanes(v)`: ``L``, a compile-time constant;
- :func:`pow2(k)`: ``2.0 ** k`` for an integral float ``k``, from the exponent bits (scalar, vectorisable).
"""

import llvmlite.binding as _ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from ..config import VECTOR_BYTES

__all__ = ["Width", "W512", "W256", "Vec", "vzero", "vload", "vstore", "vfmab", "vfma", "vadd", "vmax", "vmask",
           "vloadz", "vstorez", "vevens", "vodds", "vziplo", "vziphi", "lanes", "pow2",
           "vsub", "vsplat", "vstream", "misaligned", "stream_fence"]


#: Whether the code is compiled for x86 (:func:`stream_fence`).
_X86 = _ll.get_process_triple().startswith(("x86_64", "i386", "i686"))
#: Whether the compile target has AVX-512's mask registers (how :func:`vloadz` and :func:`vstorez` build masks).
MASK_REGISTERS = VECTOR_BYTES == 64


class Width:
    """A register width in bytes, passed to kernels so that it is part of their compiled type."""

    def __init__(self, nbytes):
        self.nbytes = nbytes

    def __repr__(self):
        return f"Width({self.nbytes * 8} bits)"

    def __reduce__(self):
        return (Width, (self.nbytes,))


W512 = Width(64)
W256 = Width(32)


class WidthType(types.Type):
    """Numba type of a :class:`Width`: the byte count is part of the type (a compile-time value)."""

    def __init__(self, nbytes):
        self.nbytes = nbytes
        super().__init__(name=f"simd_width_{nbytes * 8}")


@typeof_impl.register(Width)
def _typeof_width(value, context):
    return WidthType(value.nbytes)


register_model(WidthType)(models.OpaqueModel)


@unbox(WidthType)
def _unbox_width(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


class VecType(types.Type):
    """An LLVM vector of ``count`` elements of ``dtype`` (a Numba float type)."""

    def __init__(self, dtype, count):
        self.dtype = dtype
        self.count = count
        super().__init__(name=f"vec_{dtype}x{count}")


def _llvm_float(dtype):
    return ir.FloatType() if dtype == types.float32 else ir.DoubleType()


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_llvm_float(fe_type.dtype), fe_type.count))


#: For documentation: the vector types kernels use.
Vec = VecType


def _is_float_array(a):
    return isinstance(a, types.Array) and a.dtype in (types.float32, types.float64) and a.ndim == 1


def _ptr(context, builder, arrty, arr, idxty, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.gep(ary.data, [i], inbounds=True)


def _splat(builder, x, count):
    vty = ir.VectorType(x.type, count)
    undef = ir.Constant(vty, ir.Undefined)
    v = builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count))


def _fma(builder, vty):
    name = f"llvm.fma.v{vty.count}{'f32' if isinstance(vty.element, ir.FloatType) else 'f64'}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), name)


@intrinsic
def vzero(typingctx, width, a):
    """The zero vector of ``a``'s dtype for register ``width``."""
    if not (isinstance(width, WidthType) and isinstance(a, types.Array) and a.dtype in (types.float32,
                                                                                          types.float64)):
        return None
    vt = VecType(a.dtype, width.nbytes // (a.dtype.bitwidth // 8))

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)

    return vt(width, a), codegen


@intrinsic
def lanes(typingctx, v):
    """The number of elements of vector ``v`` (a constant)."""
    if not isinstance(v, VecType):
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(64), v.count)

    return types.int64(v), codegen


def _vector_access(v, a, i):
    """True when ``v`` is a vector type and ``a[i]`` an element of a matching 1-D float array."""
    return isinstance(v, VecType) and _is_float_array(a) and a.dtype == v.dtype and isinstance(i, types.Integer)


def _vector_ptr(context, builder, v, arrty, arr, idxty, idx):
    """``&arr[idx]`` as a pointer to a vector of type ``v``."""
    p = _ptr(context, builder, arrty, arr, idxty, idx)
    return builder.bitcast(p, context.get_value_type(v).as_pointer())


@intrinsic
def vload(typingctx, v, a, i):
    """``a[i:i+L]`` as a vector of ``v``'s type (``v`` only gives the type)."""
    if not _vector_access(v, a, i):
        return None

    def codegen(context, builder, sig, args):
        p = _vector_ptr(context, builder, v, sig.args[1], args[1], sig.args[2], args[2])
        return builder.load(p, align=a.dtype.bitwidth // 8)

    return v(v, a, i), codegen


@intrinsic
def vstore(typingctx, a, i, v):
    """``a[i:i+L] = v``."""
    if not _vector_access(v, a, i):
        return None

    def codegen(context, builder, sig, args):
        p = _vector_ptr(context, builder, v, sig.args[0], args[0], sig.args[1], args[1])
        builder.store(args[2], p, align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(a, i, v), codegen


@intrinsic
def vfmab(typingctx, acc, w, a, i):
    """``acc + w * a[i]``: a fused multiply-add with ``a[i]`` broadcast to every lane."""
    if not (isinstance(acc, VecType) and w == acc and _is_float_array(a) and a.dtype == acc.dtype
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(acc)
        p = _ptr(context, builder, sig.args[2], args[2], sig.args[3], args[3])
        x = builder.load(p, align=a.dtype.bitwidth // 8)
        return builder.call(_fma(builder, vty), [args[1], _splat(builder, x, acc.count), args[0]])

    return acc(acc, w, a, i), codegen


@intrinsic
def vfma(typingctx, acc, u, v):
    """``acc + u * v`` lane by lane: one fused multiply-add of three vectors."""
    if not (isinstance(acc, VecType) and u == acc and v == acc):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_fma(builder, context.get_value_type(acc)), [args[1], args[2], args[0]])

    return acc(acc, u, v), codegen


@intrinsic
def vadd(typingctx, u, v):
    """``u + v`` lane by lane."""
    if not (isinstance(u, VecType) and u == v):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return u(u, v), codegen


@intrinsic
def vsub(typingctx, u, v):
    """``u - v`` lane by lane."""
    if not (isinstance(u, VecType) and u == v):
        return None

    def codegen(context, builder, sig, args):
        return builder.fsub(args[0], args[1])

    return u(u, v), codegen


@intrinsic
def vsplat(typingctx, v, x):
    """A vector of ``v``'s type holding ``x`` (of ``v``'s dtype) in every lane."""
    if not (isinstance(v, VecType) and x == v.dtype):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[1], v.count)

    return v(v, x), codegen


@intrinsic
def vstream(typingctx, a, i, v):
    """``a[i:i+L] = v`` by a non-temporal store; ``&a[i]`` is a multiple of the vector's size (not checked)."""
    if not _vector_access(v, a, i):
        return None

    def codegen(context, builder, sig, args):
        p = _vector_ptr(context, builder, v, sig.args[0], args[0], sig.args[1], args[1])
        store = builder.store(args[2], p, align=v.count * (a.dtype.bitwidth // 8))
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(a, i, v), codegen


@intrinsic
def misaligned(typingctx, v, a, i):
    """Elements from ``a[i]`` to the next address that is a multiple of the size of a vector ``v`` (0 if aligned)."""
    if not _vector_access(v, a, i):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        size = v.count * (a.dtype.bitwidth // 8)
        address = builder.ptrtoint(_ptr(context, builder, sig.args[1], args[1], sig.args[2], args[2]), i64)
        gap = builder.and_(builder.sub(ir.Constant(i64, 0), address), ir.Constant(i64, size - 1))
        return builder.udiv(gap, ir.Constant(i64, a.dtype.bitwidth // 8))

    return types.int64(v, a, i), codegen


@intrinsic
def stream_fence(typingctx):
    """Order the non-temporal stores before it: ``sfence`` on x86 (LLVM's ``fence seq_cst`` there is a locked
    ``or``, which the vendors' manuals do not all promise to order non-temporal stores), else ``fence seq_cst``."""

    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse.sfence")
            builder.call(fn, [])
        else:  # pragma: no cover - non-x86 hosts
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def vmax(typingctx, u, v):
    """``max(u, v)`` lane by lane, NaN in ``u`` kept (``u > v or u != u ? u : v``, as ReLU needs)."""
    if not (isinstance(u, VecType) and u == v):
        return None

    def codegen(context, builder, sig, args):
        keep = builder.or_(builder.fcmp_unordered("uno", args[0], args[0]),
                           builder.fcmp_ordered(">", args[0], args[1]))
        return builder.select(keep, args[0], args[1])

    return u(u, v), codegen


@intrinsic
def vmask(typingctx, v, m):
    """``v`` in the lanes where ``m`` is non-zero, 0 in the others (a select, not a product)."""
    if not (isinstance(v, VecType) and v == m):
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(args[0].type, None)
        return builder.select(builder.fcmp_unordered("une", args[1], zero), args[0], zero)

    return v(v, m), codegen


def _lane_bits(builder, bits, vty):
    """The low ``count`` bits of the integer ``bits`` as an LLVM ``<count x i1>`` mask for vectors ``vty``.

    With AVX-512's mask registers, an integer bitcast (one ``kmov``). Elsewhere LLVM scalarizes that bitcast (about
    five scalar instructions and a ``vpinsrd`` a lane, 40 a mask on AVX2: ``benchmarks/NOTES.md``), so the mask is
    built in vector registers: ``bits`` broadcast, ANDed with ``1 << lane`` and compared with zero (three
    instructions), in lanes as wide as ``vty``'s, as ``vmaskmovps``/``vmaskmovpd`` take it."""
    count = vty.count
    if MASK_REGISTERS:
        b = builder.trunc(bits, ir.IntType(count)) if bits.type.width > count else builder.zext(bits, ir.IntType(count))
        return builder.bitcast(b, ir.VectorType(ir.IntType(1), count))
    ity = ir.IntType(64 if isinstance(vty.element, ir.DoubleType) else 32)
    b = builder.trunc(bits, ity) if bits.type.width > ity.width else builder.zext(bits, ity)
    vity = ir.VectorType(ity, count)
    splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vity, None), b, ir.Constant(ir.IntType(32), 0)),
                                   ir.Constant(vity, None), ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count))
    lanes_ = builder.and_(splat, ir.Constant(vity, [1 << k for k in range(count)]))
    return builder.icmp_unsigned("!=", lanes_, ir.Constant(vity, [0] * count))


def _masked(builder, what, vty, args):
    """A call of ``llvm.masked.<what>`` (``load`` or ``store``) on vectors of type ``vty``."""
    name = f"llvm.masked.{what}.v{vty.count}{'f32' if isinstance(vty.element, ir.FloatType) else 'f64'}.p0"
    types_ = [a.type for a in args]
    ret = vty if what == "load" else ir.VoidType()
    return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, types_), name), args)


@intrinsic
def vloadz(typingctx, v, a, i, bits):
    """``a[i + l]`` in the lanes ``l`` set in ``bits``, 0 in the others (not read: no fault past ``a``'s ends)."""
    if not (_vector_access(v, a, i) and isinstance(bits, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _vector_ptr(context, builder, v, sig.args[1], args[1], sig.args[2], args[2])
        vty = context.get_value_type(v)
        align = ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8)
        return _masked(builder, "load", vty, [p, align, _lane_bits(builder, args[3], vty), ir.Constant(vty, None)])

    return v(v, a, i, bits), codegen


@intrinsic
def vstorez(typingctx, a, i, v, bits):
    """``a[i + l] = v[l]`` for the lanes ``l`` set in ``bits``; the others are not touched.

    Without AVX-512's mask registers a plain store when ``bits`` has every lane (AMD's AVX2 cores microcode
    ``vmaskmovps`` to memory)."""
    if not (_vector_access(v, a, i) and isinstance(bits, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _vector_ptr(context, builder, v, sig.args[0], args[0], sig.args[1], args[1])
        align = ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8)
        vty = context.get_value_type(v)
        if MASK_REGISTERS:
            _masked(builder, "store", vty, [args[2], p, align, _lane_bits(builder, args[3], vty)])
            return context.get_dummy_value()
        # AMD's AVX2 cores microcode vmaskmovps/vmaskmovpd to memory: a plain store when every lane is set.
        full = ir.Constant(args[3].type, (1 << v.count) - 1)
        with builder.if_else(builder.icmp_unsigned("==", builder.and_(args[3], full), full)) as (every, some):
            with every:
                builder.store(args[2], p, align=a.dtype.bitwidth // 8)
            with some:
                _masked(builder, "store", vty, [args[2], p, align, _lane_bits(builder, args[3], vty)])
        return context.get_dummy_value()

    return types.void(a, i, v, bits), codegen


def _strided_lanes(u, first):
    """The signature and code of lanes ``first, first + 2, ...`` of the concatenation of two vectors ``u``."""
    if not isinstance(u, VecType):
        return None

    def codegen(context, builder, sig, args):
        idx = ir.Constant(ir.VectorType(ir.IntType(32), u.count), [first + 2 * k for k in range(u.count)])
        return builder.shuffle_vector(args[0], args[1], idx)

    return u(u, u), codegen


@intrinsic
def vevens(typingctx, u, v):
    """Lanes ``0, 2, 4, ...`` of the concatenation ``(u, v)``: with ``u = a[i:i+L]`` and ``v = a[i+L:i+2L]``,
    ``a[i:i+2L:2]`` (one two-source permute on AVX-512)."""
    return _strided_lanes(u, 0) if u == v else None


@intrinsic
def vodds(typingctx, u, v):
    """Lanes ``1, 3, 5, ...`` of the concatenation ``(u, v)``: ``a[i+1:i+2L:2]``."""
    return _strided_lanes(u, 1) if u == v else None


def _zip(u, half):
    """The signature and code of interleaving the ``half`` (0 low, 1 high) halves of two vectors ``u``."""
    if not isinstance(u, VecType):
        return None

    def codegen(context, builder, sig, args):
        L = u.count
        idx = [half * L // 2 + k // 2 + (L if k % 2 else 0) for k in range(L)]
        return builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(ir.IntType(32), L), idx))

    return u(u, u), codegen


@intrinsic
def vziplo(typingctx, u, v):
    """``u[0], v[0], u[1], v[1], ...`` up to the middle of ``u`` and ``v``."""
    return _zip(u, 0) if u == v else None


@intrinsic
def vziphi(typingctx, u, v):
    """``u[L/2], v[L/2], u[L/2 + 1], v[L/2 + 1], ...``: the high halves interleaved."""
    return _zip(u, 1) if u == v else None


@intrinsic
def pow2(typingctx, k):
    """``2.0 ** k`` for a float ``k`` holding an integer of the normal exponent range (``[-126, 127]`` for
    float32, ``[-1022, 1023]`` for float64; not checked), built from the exponent bits: no call, so a loop
    using it vectorises (the fast ``exp`` of :mod:`fastconv.kernels.activation`)."""
    if k not in (types.float32, types.float64):
        return None
    bits, mantissa, bias = (32, 23, 127) if k == types.float32 else (64, 52, 1023)

    def codegen(context, builder, sig, args):
        ity = ir.IntType(bits)
        e = builder.add(builder.fptosi(args[0], ity), ir.Constant(ity, bias))
        return builder.bitcast(builder.shl(e, ir.Constant(ity, mantissa)), _llvm_float(k))

    return k(k), codegen

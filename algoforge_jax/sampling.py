"""Batched, jitted sampling with a KV cache: the rollout engine of both agents.

`Sampler.generate` left-pads a batch of prompts into a (batch, length) bucket, runs one jitted prefill that fills
the KV cache and picks each row's first token, then jitted decode programs: each a `jax.lax.while_loop` over an
explicit `SampleState` pytree that stops as soon as every row has finished. The state (cache included) is
donated to the decode program, so XLA updates the cache in place. Model weights are an argument of every
program, never a constant in them: new policy weights after an RL step reuse the compiled programs.

Decoding runs in segments (`SamplerConfig.segments`): the cache starts with room for the prompt and
`first_segment` new tokens (more for long budgets, so there are at most `max_segments`) and doubles its room for
new tokens each time it fills, up to `max_new_tokens`. A decode step reads the whole cache, so its cost follows
what has been generated rather than the full budget; a segment is only compiled and run if some row is still
going when the previous one ends.

Each sampled token's log-probability is kept twice: under the distribution it was drawn from (temperature,
top-k, top-p applied) and under the plain model (`model_logprobs`), which is what GRPO's ratio needs.

Inputs are checked before anything runs (`check_config`, `check_prompts`: ids outside the vocabulary, prompts too
long for the model's positions). A call returns its timings with its result (`Rollout.stats`, compile seconds
apart); the Sampler itself keeps nothing between calls but its compiled programs.

Left out: speculative decoding, paged caches and continuous batching; a batch runs until its longest row ends.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from algoforge_jax import sharding
from algoforge_jax.models.qwen2 import KVCache, Qwen2Config, Qwen2ForCausalLM

FINISH_REASONS = ("running", "eos", "length")  # index = code in SampleState.finish_B

# ---------------------------------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Greedy:
    """Always the most likely token."""

    def get_next_tokens(self, logits_BV: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        del rng
        tokens_B = blocked_argmax(logits_BV)
        return tokens_B, jnp.zeros(tokens_B.shape, jnp.float32)  # log 1: the choice is certain


@dataclasses.dataclass(frozen=True)
class Sample:
    """Ancestral sampling from softmax(logits / temperature), optionally truncated to the top-k tokens and/or
    the smallest set of tokens whose probability reaches top_p (nucleus). top_k=0 and top_p=1.0 disable them."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling (use Greedy for 0), got {self.temperature}")
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={self.top_k}, top_p={self.top_p}")

    def log_probs(self, logits_BV: jax.Array) -> jax.Array:
        """Log-probabilities of the distribution tokens are drawn from (-inf outside the kept set)."""
        logits_BV = logits_BV.astype(jnp.float32) / self.temperature
        top_BK = None  # the candidates for top-p, most likely first
        if self.top_k and self.top_k < logits_BV.shape[-1]:
            top_BK = jax.lax.top_k(logits_BV, self.top_k)[0]
            logits_BV = jnp.where(logits_BV < top_BK[:, -1:], -jnp.inf, logits_BV)
        if self.top_p < 1.0:
            if top_BK is None:
                top_BK = jnp.sort(logits_BV, axis=-1)[:, ::-1]
            # After top-k only its k values can carry mass: no sort of the whole vocabulary. (Tokens tied with
            # the k-th share its value, so they cannot move the cutoff; the normaliser still counts them.)
            probs_BK = jnp.exp(top_BK - jax.nn.logsumexp(logits_BV, axis=-1, keepdims=True))
            # Keep a token if the mass of the tokens strictly more likely than it is still below top_p.
            mass_before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
            cutoff_B1 = jnp.min(jnp.where(mass_before_BK < self.top_p, top_BK, jnp.inf), axis=-1, keepdims=True)
            logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
        return jax.nn.log_softmax(logits_BV, axis=-1)

    def get_next_tokens(self, logits_BV: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        logp_BV = self.log_probs(logits_BV)
        tokens_B = blocked_categorical(logp_BV, rng)
        return tokens_B, _pick(logp_BV, tokens_B)


# Vocabulary sizes of the Qwen2 family are multiples of 128, so the vocab axis splits into [V/128, 128]
# blocks with a free reshape. Both helpers below reduce over blocks first and then inside one block: on
# XLA:CPU that is ~20x faster than jnp.argmax's variadic reduce over 152k entries, and sampling by inverse CDF
# needs one uniform per row instead of the V Gumbel draws of jax.random.categorical.
_BLOCK = 128


def _block_max(x_BV: jax.Array) -> jax.Array:
    """Maximum of each 128-entry block of the last axis: [B, V/128]."""
    B, V = x_BV.shape
    return x_BV.reshape(B, V // _BLOCK, _BLOCK).max(axis=-1)


def blocked_argmax(x_BV: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (first maximal index), in two cheap passes when V is a multiple of 128."""
    B, V = x_BV.shape
    if V % _BLOCK:
        return jnp.argmax(x_BV, axis=-1).astype(jnp.int32)
    blocks_BNC = x_BV.reshape(B, V // _BLOCK, _BLOCK)
    block_B = jnp.argmax(_block_max(x_BV), axis=-1)
    inner_BC = jnp.take_along_axis(blocks_BNC, block_B[:, None, None], axis=1)[:, 0]
    return (block_B * _BLOCK + jnp.argmax(inner_BC, axis=-1)).astype(jnp.int32)


def _first_above(cdf_BN: jax.Array, u_B1: jax.Array, mass_BN: jax.Array) -> jax.Array:
    """Index of the first entry whose cumulative mass exceeds u; if rounding pushes u past the total, the last
    entry with mass. Either way the chosen entry has positive mass."""
    idx_B = jnp.sum(cdf_BN <= u_B1, axis=-1)
    last_B = cdf_BN.shape[-1] - 1 - jnp.argmax((mass_BN > 0)[:, ::-1], axis=-1)
    return jnp.where(idx_B < cdf_BN.shape[-1], idx_B, last_B)


def blocked_categorical(logp_BV: jax.Array, rng: jax.Array) -> jax.Array:
    """One draw per row from exp(logp_BV) by inverse CDF: pick a block by its mass, then a token inside it.

    Tokens with probability 0 (log-prob -inf) are never drawn."""
    B, V = logp_BV.shape
    pad = -V % _BLOCK
    probs_BV = jnp.exp(logp_BV if not pad else jnp.pad(logp_BV, ((0, 0), (0, pad)), constant_values=-jnp.inf))
    blocks_BNC = probs_BV.reshape(B, -1, _BLOCK)
    mass_BN = blocks_BNC.sum(axis=-1)
    cdf_BN = jnp.cumsum(mass_BN, axis=-1)
    u_B1 = jax.random.uniform(rng, (B, 1)) * cdf_BN[:, -1:]
    block_B = _first_above(cdf_BN, u_B1, mass_BN)
    inner_BC = jnp.take_along_axis(blocks_BNC, block_B[:, None, None], axis=1)[:, 0]
    u_B1 = u_B1 - (_pick(cdf_BN, block_B) - _pick(mass_BN, block_B))[:, None]
    token_B = _first_above(jnp.cumsum(inner_BC, axis=-1), u_B1, inner_BC)
    return (block_B * _BLOCK + token_B).astype(jnp.int32)


def logsumexp(x_BV: jax.Array) -> jax.Array:
    """log(sum(exp(x))) over the last axis, its maximum taken from the block maxima: the same expression as in
    blocked_argmax, which XLA computes once for both, so a greedy step reads the logits twice instead of three
    times."""
    B, V = x_BV.shape
    if V % _BLOCK:
        m_B = x_BV.max(axis=-1)
    else:  # picked, not reduced: XLA folds a max of block maxima back into a full pass of its own
        max_BN = _block_max(x_BV)
        m_B = _pick(max_BN, jnp.argmax(max_BN, axis=-1))
    m_B = jax.lax.stop_gradient(m_B)
    return m_B + jnp.log(jnp.sum(jnp.exp(x_BV - m_B[:, None]), axis=-1))


def _pick(x_BV: jax.Array, tokens_B: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BV, tokens_B[:, None], axis=-1)[:, 0]


def sampling_method(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Greedy | Sample:
    """temperature 0 means greedy (top-k/top-p are then irrelevant)."""
    return Greedy() if temperature == 0 else Sample(temperature, top_k, top_p)


# ------------------------------------------------------------------------------------------------ state


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """What to generate; all fields are static (they shape the compiled programs)."""

    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    min_prompt_bucket: int = 16  # prompt lengths are padded up to a power of two at least this
    min_batch_bucket: int = 1  # batch sizes are padded up to a power of two at least this
    first_segment: int = 32  # least room for new tokens in the first decode segment; 0: one segment
    max_segments: int = 4  # each segment is a compiled program: long budgets start bigger than first_segment

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.first_segment < 0 or self.max_segments < 1:
            raise ValueError(f"need max_new_tokens >= 1, first_segment >= 0 and max_segments >= 1, got "
                             f"{self.max_new_tokens}, {self.first_segment} and {self.max_segments}")

    @property
    def segments(self) -> tuple[int, ...]:
        """Room for new tokens in each decode segment's cache, doubling up to max_new_tokens: the first has
        first_segment, or more when that would take over max_segments segments."""
        N = self.max_new_tokens
        cap = max(self.first_segment, -(-N // 2 ** (self.max_segments - 1))) if self.first_segment else N
        caps = []
        while cap < N:
            caps.append(cap)
            cap *= 2
        return (*caps, N)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SampleState:
    """Everything the decode loop carries. B = rows (prompts x samples), N = max_new_tokens."""

    step: jax.Array  # number of tokens generated so far (same for every row)
    tokens_BN: jax.Array
    logprobs_BN: jax.Array  # under the sampling distribution
    model_logprobs_BN: jax.Array  # under the untempered model
    last_B: jax.Array  # the most recent token of each row, fed to the next step
    done_B: jax.Array
    finish_B: jax.Array  # index into FINISH_REASONS
    cache: KVCache
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class SampleStats:
    """Where one call's time went. Compiling is reported apart: it is paid once per shape bucket (and, with
    JAX's persistent compilation cache, mostly skipped by later processes), generating on every call."""

    compile_seconds: float  # lowering and compiling the programs this call was the first to need
    prefill_seconds: float
    decode_seconds: float  # the decode loops and cache growth, until the last token is on the device
    decode_steps: int  # model calls made by the decode loop (the prefill chose the first token)
    programs_compiled: int  # programs this call compiled (or loaded from the persistent cache)

    @property
    def generate_seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Host-side result. Rows are prompt-major: row = prompt_index * num_samples + sample_index."""

    tokens: np.ndarray  # [R, N] generated ids, pad_token_id after each row's end
    lengths: np.ndarray  # [R] generated tokens per row, the stop token included
    logprobs: np.ndarray  # [R, N] log-prob of each sampled token under the sampling distribution (0 past the end)
    model_logprobs: np.ndarray  # [R, N] same, under the untempered model
    finish_reason: list[str]  # "eos" or "length"
    prompt_index: np.ndarray
    sample_index: np.ndarray
    stats: SampleStats

    def row_tokens(self, r: int) -> list[int]:
        return self.tokens[r, : self.lengths[r]].tolist()

    @property
    def new_tokens(self) -> int:
        """Tokens generated over all rows, stop tokens included."""
        return int(self.lengths.sum())


# ------------------------------------------------------------------------------------------------ checks


def _outside(ids, vocab_size: int) -> int | None:
    """The first id that is not a row of the embedding table, or None."""
    ids = np.asarray(ids, np.int64)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    return int(bad[0]) if bad.size else None


def check_config(model_cfg: Qwen2Config, cfg: SamplerConfig) -> None:
    """Refuses stop and pad ids the model cannot embed or produce: an out-of-range pad id would otherwise fill
    padding with garbage and a stop id could never match, both silently."""
    V = model_cfg.vocab_size
    for name, ids in (("stop token", cfg.stop_token_ids), ("pad token", [cfg.pad_token_id])):
        if (bad := _outside(ids, V)) is not None:
            raise ValueError(f"{name} id {bad} is outside the model's vocabulary (vocab_size {V})")


def check_prompts(model_cfg: Qwen2Config, cfg: SamplerConfig, prompts: Sequence[Sequence[int]]) -> None:
    """Refuses, naming the prompt, one that is empty, holds an id outside the vocabulary, or whose tokens plus
    max_new_tokens exceed max_position_embeddings (RoPE positions count real tokens only, so padding is free)."""
    if not prompts:
        raise ValueError("no prompts")
    V, P, N = model_cfg.vocab_size, model_cfg.max_position_embeddings, cfg.max_new_tokens
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i}: needs at least one token")
        if (bad := _outside(prompt, V)) is not None:
            raise ValueError(f"prompt {i}: token id {bad} is outside the model's vocabulary (vocab_size {V})")
        if len(prompt) + N > P:
            raise ValueError(f"prompt {i}: {len(prompt)} tokens + max_new_tokens {N} exceed the model's "
                             f"max_position_embeddings ({P})")


def _record(state: SampleState, logits_BV, method, cfg: SamplerConfig, rng) -> SampleState:
    """Samples one token per row from `logits_BV` and appends it to the state."""
    tokens_B, logp_B = method.get_next_tokens(logits_BV, rng)
    # log_softmax at one token only: no [B, V] log-prob array is written for it.
    model_logp_B = _pick(logits_BV, tokens_B) - logsumexp(logits_BV)
    live_B = ~state.done_B
    tokens_B = jnp.where(live_B, tokens_B, cfg.pad_token_id)
    stop_B = jnp.isin(tokens_B, jnp.asarray(cfg.stop_token_ids, jnp.int32)) & live_B
    out_of_room_B = live_B & ~stop_B & (state.step + 1 >= cfg.max_new_tokens)
    put = lambda buf, val: jax.lax.dynamic_update_slice(buf, val[:, None].astype(buf.dtype), (0, state.step))  # noqa: E731
    return dataclasses.replace(
        state,
        step=state.step + 1,
        tokens_BN=put(state.tokens_BN, tokens_B),
        logprobs_BN=put(state.logprobs_BN, jnp.where(live_B, logp_B, 0.0)),
        model_logprobs_BN=put(state.model_logprobs_BN, jnp.where(live_B, model_logp_B, 0.0)),
        last_B=tokens_B,
        done_B=state.done_B | stop_B | out_of_room_B,
        finish_B=jnp.where(stop_B, 1, jnp.where(out_of_room_B, 2, state.finish_B)),
    )


# ---------------------------------------------------------------------------------------------- programs

_K_AXES = ("layers", "batch", "kv_heads", "head_dim", "cache_len")
_V_AXES = ("layers", "batch", "kv_heads", "cache_len", "head_dim")


def _constrain(state: SampleState, mesh: Mesh, rules: sharding.ShardingRules) -> SampleState:
    """Rows over the batch mesh axes and cache heads over `tensor`: the layout the decode loop carries, stated
    rather than left to propagation (the cache starts as zeros, which carry no sharding of their own)."""

    def put(x, axes):
        return jax.lax.with_sharding_constraint(x, sharding.named_sharding(axes, rules, mesh, x.shape))

    rows = lambda x: put(x, ("batch",) + (None,) * (x.ndim - 1))  # noqa: E731
    cache = state.cache
    cache = dataclasses.replace(
        cache,
        k_LBKHS=put(cache.k_LBKHS, _K_AXES),
        v_LBKSH=put(cache.v_LBKSH, _V_AXES),
        valid_BS=rows(cache.valid_BS),
        next_pos_B=rows(cache.next_pos_B),
    )
    return dataclasses.replace(
        state, cache=cache, **{f: rows(getattr(state, f)) for f in
                               ("tokens_BN", "logprobs_BN", "model_logprobs_BN", "last_B", "done_B", "finish_B")})


def _prefill(graphdef, params, prompts_BT, valid_BT, live_B, rng, *, method, cfg: SamplerConfig, layout):
    model = nnx.merge(graphdef, params)
    B, T = prompts_BT.shape
    N = cfg.max_new_tokens
    cache = KVCache.init(model.config, B, T + cfg.segments[0])
    hidden_BTD, cache = model.hidden_states(prompts_BT, valid_BT, cache)
    logits_BV = model.logits(hidden_BTD[:, -1:])[:, 0]
    rng, step_rng = jax.random.split(rng)
    state = SampleState(
        step=jnp.zeros((), jnp.int32),
        tokens_BN=jnp.full((B, N), cfg.pad_token_id, jnp.int32),
        logprobs_BN=jnp.zeros((B, N), jnp.float32),
        model_logprobs_BN=jnp.zeros((B, N), jnp.float32),
        last_B=jnp.zeros((B,), jnp.int32),
        done_B=~live_B,
        finish_B=jnp.zeros((B,), jnp.int32),
        cache=cache,
        rng=rng,
    )
    return layout(_record(state, logits_BV, method, cfg, step_rng))


def _running(s: SampleState, cfg: SamplerConfig) -> jax.Array:
    return (s.step < cfg.max_new_tokens) & ~jnp.all(s.done_B)


def _decode(graphdef, params, state: SampleState, *, method, cfg: SamplerConfig, layout):
    """Decodes until every row is done or the cache is full: (state, whether any row is still going)."""
    model = nnx.merge(graphdef, params)

    def cond(s: SampleState):
        # A step writes the previous token at slot `end`, so a cache of S slots takes steps while end < S.
        return _running(s, cfg) & (s.cache.end < s.cache.size)

    def body(s: SampleState):
        hidden_B1D, cache = model.hidden_states(s.last_B[:, None], None, s.cache)
        rng, step_rng = jax.random.split(s.rng)
        s = dataclasses.replace(s, cache=cache, rng=rng)
        return layout(_record(s, model.logits(hidden_B1D)[:, 0], method, cfg, step_rng))

    state = jax.lax.while_loop(cond, body, state)
    return state, _running(state, cfg)


def _grow(state: SampleState, *, size: int, layout) -> SampleState:
    return layout(dataclasses.replace(state, cache=state.cache.grow(size)))


def bucket(n: int, minimum: int) -> int:
    """The padded size of n: the next power of two, at least `minimum` (prompt lengths and batch sizes)."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


class Sampler:
    """Generates from one model architecture on one mesh; compiled programs are kept per (program, method, shapes).

    Weights are passed to every call, so the same Sampler serves a policy whose weights change between calls.
    Programs are compiled ahead of time (`jit(...).lower(...).compile()`) the first time a call needs them, so
    that a call can report its compile seconds apart from its generation seconds.
    """

    def __init__(self, graphdef, model_cfg: Qwen2Config, mesh: Mesh, cfg: SamplerConfig,
                 rules: sharding.ShardingRules):
        check_config(model_cfg, cfg)
        self.graphdef, self.model_cfg, self.mesh, self.cfg, self.rules = graphdef, model_cfg, mesh, cfg, rules
        self.batch_multiple = sharding.batch_shards(mesh, rules)
        self._jitted: dict = {}  # sampling method -> (prefill, decode, grow), jitted but not yet compiled
        self._executables: dict = {}  # (jitted program, static args, argument shapes and shardings) -> compiled

    @property
    def traces(self) -> int:
        """How many programs have been compiled: one per (program, method, shape bucket, cache size)."""
        return len(self._executables)

    def _programs(self, method):
        if method not in self._jitted:
            layout = functools.partial(_constrain, mesh=self.mesh, rules=self.rules)
            common = dict(method=method, cfg=self.cfg, layout=layout)
            self._jitted[method] = (jax.jit(functools.partial(_prefill, self.graphdef, **common)),
                                    jax.jit(functools.partial(_decode, self.graphdef, **common), donate_argnums=1),
                                    jax.jit(functools.partial(_grow, layout=layout), static_argnames="size"))
        return self._jitted[method]

    def _call(self, seconds: collections.Counter, phase: str, program, *args, **static):
        """`program(*args, **static)`, compiled first if these shapes and shardings are new; adds the seconds
        spent compiling, and running until the result is on the device, to `seconds["compile"]` and
        `seconds[phase]`."""
        leaves, tree = jax.tree.flatten(args)
        key = (program, tuple(static.items()), tree, tuple((x.shape, x.dtype, x.sharding) for x in leaves))
        start = time.perf_counter()
        if key not in self._executables:
            self._executables[key] = program.lower(*args, **static).compile()
            seconds["compile"] += time.perf_counter() - start
            start = time.perf_counter()
        out = jax.block_until_ready(self._executables[key](*args))
        seconds[phase] += time.perf_counter() - start
        return out

    def generate(self, params: nnx.State, prompts: Sequence[Sequence[int]], method=Greedy(),
                 num_samples: int = 1, seed: int = 0) -> Rollout:
        """Samples `num_samples` continuations of every prompt (token id lists); the Rollout carries the
        call's timings. Raises ValueError, naming the prompt, for ids outside the vocabulary or prompts too
        long for the model's positions (see `check_prompts`)."""
        state, stats = self.run(params, prompts, method, num_samples, seed)
        num_rows = len(prompts) * num_samples
        out = [sharding.to_host(x)[:num_rows] for x in (state.tokens_BN, state.logprobs_BN,
                                                         state.model_logprobs_BN, state.finish_B)]
        return self._rollout(*out, stats=stats, num_samples=num_samples)

    def run(self, params: nnx.State, prompts: Sequence[Sequence[int]], method=Greedy(), num_samples: int = 1,
            seed: int = 0) -> tuple[SampleState, SampleStats]:
        """`generate` without copying the result to the host: (the final, sharded SampleState, timings).

        The state's batch is padded to its bucket: its first len(prompts) * num_samples rows are the real ones,
        the others filler, finished from the start. Its cache is only as large as the last decode segment that ran.
        """
        check_prompts(self.model_cfg, self.cfg, prompts)
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        rows = [list(p) for p in prompts for _ in range(num_samples)]
        prompts_BT, valid_BT, live_B = self._pad(rows)
        put = lambda x: sharding.from_host(x, sharding.batch_sharding(self.mesh, self.rules, x.ndim))  # noqa: E731
        prefill, decode, grow = self._programs(method)
        seconds, compiled_before = collections.Counter(), self.traces
        with jax.set_mesh(self.mesh):
            state = self._call(seconds, "prefill", prefill, params, put(prompts_BT), put(valid_BT), put(live_B),
                               jax.random.key(seed))
            state, running = self._call(seconds, "decode", decode, params, state)
            for room in self.cfg.segments[1:]:
                if not sharding.to_host(running):
                    break
                state = self._call(seconds, "decode", grow, state, size=prompts_BT.shape[1] + room)
                state, running = self._call(seconds, "decode", decode, params, state)
        stats = SampleStats(float(seconds["compile"]), seconds["prefill"], seconds["decode"],
                            int(sharding.to_host(state.step)) - 1, self.traces - compiled_before)
        return state, stats

    def _pad(self, rows: list[list[int]]):
        T = bucket(max(map(len, rows)), self.cfg.min_prompt_bucket)
        B = bucket(len(rows), max(self.cfg.min_batch_bucket, self.batch_multiple))
        B += -B % self.batch_multiple
        prompts_BT = np.full((B, T), self.cfg.pad_token_id, np.int32)
        valid_BT = np.zeros((B, T), bool)
        for i, row in enumerate(rows):
            prompts_BT[i, T - len(row):] = row
            valid_BT[i, T - len(row):] = True
        valid_BT[len(rows):, -1] = True  # filler rows: one dummy token so no softmax is all-masked
        return prompts_BT, valid_BT, np.arange(B) < len(rows)

    def _rollout(self, tokens, logprobs, model_logprobs, finish, *, stats: SampleStats, num_samples: int) -> Rollout:
        # A stopped row ends at its first stop token (included); every other row used the whole budget.
        first_stop = np.argmax(np.isin(tokens, self.cfg.stop_token_ids), axis=1) + 1
        lengths = np.where(finish == 1, first_stop, self.cfg.max_new_tokens).astype(np.int64)
        rows = np.arange(len(tokens))
        return Rollout(tokens, lengths, logprobs, model_logprobs, [FINISH_REASONS[f] for f in finish],
                       rows // num_samples, rows % num_samples, stats)


def make_sampler(model: Qwen2ForCausalLM, mesh: Mesh, cfg: SamplerConfig, rules: sharding.ShardingRules):
    """(Sampler, params): the sampler for this model's architecture and the weights to pass it."""
    graphdef, params = nnx.split(model)
    return Sampler(graphdef, model.config, mesh, cfg, rules), params

"""Audio: WAV, FLAC, Ogg Vorbis, MP3; header checked first, decoded block by block to mono."""

from __future__ import annotations

import io
import math
import struct
from typing import Any

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

from xmodal.encoders.base import Waveform, frames_in
from xmodal.encoders.media._limits import MediaLimits, check_bytes, fail
from xmodal.errors import MediaError

__all__ = ["AUDIO_FORMATS", "MAX_CHANNELS", "MAX_SAMPLE_RATE", "decode_audio"]

AUDIO_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "MP3"})
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32


def _sniff_audio(data: bytes) -> bool:
    return (
        (data[:4] == b"RIFF" and data[8:12] == b"WAVE")
        or data.startswith((b"fLaC", b"OggS", b"ID3"))
        or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)  # MPEG frame sync
    )


def decode_audio(data: bytes, limits: MediaLimits) -> Waveform:
    """Decode WAV, FLAC, OGG or MP3 to a mono float32 waveform at the file's own sample rate.

    Rate, channels and duration are checked from the header before any sample is decoded, and
    decoding reads at most `max_audio_seconds` of frames whatever the header claimed. With
    `limits.audio_seconds` set, only that start of the clip is decoded (what the towers read); the
    rest of a longer file is not decoded, but its last frame must still be there.
    """
    check_bytes(len(data), limits, "audio")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        _check_wav_header(data, limits)
    try:
        info = sf.info(io.BytesIO(data))
    except sf.SoundFileError as e:
        if _sniff_audio(data):
            raise MediaError(
                f"audio header is invalid or truncated (libsndfile: {_sf_reason(e)})", code="audio_invalid_header"
            ) from e
        raise MediaError(
            "not a recognised audio file; send WAV, FLAC, OGG or MP3", code="unsupported_format"
        ) from e
    if info.format not in AUDIO_FORMATS:
        fail("unsupported_format", f"{info.format} audio is not accepted; send WAV, FLAC, OGG or MP3")
    _check_stream(info.samplerate, info.channels)
    _check_seconds(info.frames / info.samplerate, limits, "header says")

    consumed = None if limits.audio_seconds is None else frames_in(limits.audio_seconds, info.samplerate)
    mono = _decode_mono(data, info, limits, consumed)
    if len(mono) == 0:
        fail("media_empty", "audio has no samples (empty, or truncated before its first frame)")
    # MP3 frame counts are estimates (bitrate or Xing header); every other format's is exact.
    slack = info.frames // 20 if info.format == "MP3" else 0
    promised = info.frames - slack
    if consumed is not None and consumed < promised:
        # Decoding stopped early, so a cut-off file would pass unseen: look for its last frame.
        _check_last_frame(data, promised, info.frames)
        promised = consumed
    if len(mono) < promised:
        fail("media_corrupt", f"audio is truncated: header says {info.frames} frames, decoded {len(mono)}")
    if not np.isfinite(mono).all():
        fail("media_corrupt", "audio contains NaN or infinite samples")
    return Waveform(np.clip(mono, -1.0, 1.0), int(info.samplerate))


_BLOCK_FRAMES = 1 << 16


def _decode_mono(data: bytes, info: Any, limits: MediaLimits, consumed: int | None) -> np.ndarray:
    """Decode block by block, downmixing as we go: memory follows the samples actually decoded
    (one channel of them), never the frame and channel counts a header claims. Stops after
    `consumed` frames when given, else one frame past the cap, to catch a header that understated."""
    max_frames = math.floor(limits.max_audio_seconds * info.samplerate)
    stop = max_frames + 1 if consumed is None else min(consumed, max_frames + 1)
    blocks: list[np.ndarray] = []
    decoded = 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            while decoded < stop:
                block = f.read(min(_BLOCK_FRAMES, stop - decoded), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block.mean(axis=1, dtype=np.float32))
                decoded += len(block)
    except sf.SoundFileError as e:
        raise MediaError(f"audio is truncated or corrupt (libsndfile: {_sf_reason(e)})", code="media_corrupt") from e
    if decoded > max_frames:  # more samples than the header admitted to
        _check_seconds(decoded / info.samplerate, limits, "decoded audio is over")
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _check_last_frame(data: bytes, frame: int, claimed: int) -> None:
    """Seek to `frame` (1-based) and read it: a file cut after the decoded start but before its end
    is still refused as truncated, at the cost of one seek (libsndfile seeks WAV and FLAC exactly,
    and MP3 within the slack allowed for its estimated length), not a full decode."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            f.seek(frame - 1)
            present = len(f.read(1, dtype="float32", always_2d=True)) == 1
    except sf.SoundFileError as e:
        raise MediaError(
            f"audio is truncated or corrupt: header says {claimed} frames, cannot reach frame {frame} "
            f"(libsndfile: {_sf_reason(e)})",
            code="media_corrupt",
        ) from e
    if not present:
        fail("media_corrupt", f"audio is truncated: header says {claimed} frames, the file ends before frame {frame}")


def _sf_reason(e: sf.SoundFileError) -> str:
    # libsndfile's text after "Error opening <_io.BytesIO ...>: " is the useful part, except its
    # "File does not exist" for in-memory data it could not parse, which would mislead a producer.
    reason = str(e).rsplit(": ", 1)[-1]
    return "unparseable stream" if reason.startswith("File does not exist") else reason


def _check_stream(rate: int, channels: int) -> None:
    if not 0 < rate <= MAX_SAMPLE_RATE:
        fail("audio_invalid_header", f"sample rate {rate} Hz is invalid (must be 1..{MAX_SAMPLE_RATE})")
    if not 0 < channels <= MAX_CHANNELS:
        fail("audio_invalid_header", f"channel count {channels} is invalid (must be 1..{MAX_CHANNELS})")


def _check_seconds(seconds: float, limits: MediaLimits, what: str) -> None:
    if seconds > limits.max_audio_seconds:
        fail(
            "audio_too_long",
            f"audio is too long: {what} {seconds:.1f} s, limit {limits.max_audio_seconds:g} s "
            "(XMODAL_MAX_AUDIO_SECONDS)",
        )


def _check_wav_header(data: bytes, limits: MediaLimits) -> None:
    """Walk the RIFF chunks ourselves: libsndfile quietly clamps a data chunk that claims more
    than the file holds, and reports a sample rate of 0 as an internal error."""
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + 16 > len(data):
                fail("audio_invalid_header", "WAV fmt chunk is too short")
            _tag, channels, rate, _byte_rate, block_align, _bits = struct.unpack_from("<HHIIHH", data, body)
            _check_stream(rate, channels)
            if block_align == 0:
                fail("audio_invalid_header", "WAV block align is 0")
            fmt = (rate, block_align)
        elif chunk == b"data":
            if fmt is None:
                fail("audio_invalid_header", "WAV data chunk comes before its fmt chunk")
            available = len(data) - body
            if size == 0xFFFFFFFF:  # streaming writers' "length unknown": trust the file
                size = available
            rate, block_align = fmt
            _check_seconds(size / block_align / rate, limits, "WAV header claims")
            if size > available:
                fail("media_corrupt", f"WAV is truncated: header claims {size} data bytes, file has {available}")
            return
        pos = body + size + (size & 1)  # chunks are word-aligned
    fail("audio_invalid_header", "WAV has no fmt and data chunks")

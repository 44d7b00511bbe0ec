"""The meter measures the audio, not the file's claims: every accepted format, and the
files an attacker builds to be billed less, to stall the gateway, or to make FFmpeg open
something other than the upload."""

from __future__ import annotations

import io
import random
import resource
import struct
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.audio import disguise
from app.audio.container import DEMUXERS, forwarded_filename, id3v2_end
from app.audio.disguise import may_be_disguised, probed_window
from app.audio.measure import Limits, measure, measure_inline
from app.audio.packets import opus_samples
from app.audio.refusals import AudioRefused
from app.audio.sandbox import Sandbox
from app.audio.wav import MAX_WAV_CHUNKS, declares_pcm16, walk
from tests import disguise_reference
from tests.audio_files import (
    TONE_RATE,
    decoded_seconds,
    encode,
    fmt_chunk,
    forge_streaminfo,
    id3_tag,
    mp4_index_bomb,
    mpegts_aac,
    repacked,
    riff,
    silent_flac,
    tone,
    wav,
)

FIXTURES = Path(__file__).parent / "fixtures"
SPEECH_MS = 5849  # sox: 5.84875 s, rounded up


def _measure(data: bytes, max_seconds: int = 10_800):
    """``measure``'s answer, which the gateway's event-loop path (``measure_inline``) must
    give too whenever it answers at all."""
    limits = Limits(max_seconds=max_seconds)
    file = io.BytesIO(data)
    audio = measure(file, len(data), limits)
    assert file.tell() == 0  # ready to be forwarded
    assert measure_inline(file, len(data), limits) in (None, audio)
    assert file.tell() == 0
    return audio


def _refused(data: bytes, max_seconds: int = 10_800) -> AudioRefused:
    with pytest.raises(AudioRefused) as refused:
        _measure(data, max_seconds)
    assert refused.value.status_code == 400
    assert refused.value.param == "file"
    try:  # the event-loop path refuses alike, or leaves it to the probe pool
        assert measure_inline(io.BytesIO(data), len(data), Limits(max_seconds)) is None
    except AudioRefused as inline:
        assert inline.code == refused.value.code
    return refused.value


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "webm"])
def test_every_accepted_format_is_measured(ext):
    audio = _measure((FIXTURES / f"speech.{ext}").read_bytes())
    # As a decoder plays it (Opus packets count their encoder delay): within 0.12 s.
    assert SPEECH_MS - 10 <= audio.duration_ms <= SPEECH_MS + 120, audio


def test_silence_has_its_length():
    assert _measure((FIXTURES / "silence-1s.wav").read_bytes()).duration_ms == 1000


@pytest.mark.parametrize(
    "content",
    [
        b"this is not audio at all\n",
        b"RIFF\x00\x00\x00\x00WAVEjunk",
        b"\x00" * 4096,
        (FIXTURES / "speech.mp3").read_bytes()[:200],
        b"RIFF\x14\x00\x00\x00WAVEJUNK\xff\xff\xff\x00abcd",  # a 28-byte JUNK that overruns
    ],
    ids=["text", "broken-wav", "zeros", "truncated-mp3", "junk-overrun"],
)
def test_not_audio_is_a_400_naming_the_file(content):
    assert _refused(content).code in ("invalid_audio", "empty_audio")


# --- Headers that under-state ----------------------------------------------------------


def test_every_data_chunk_of_a_wav_is_counted():
    """Python's `wave` stopped at a 0.1 s first chunk; FFmpeg plays the 59.4 s one."""
    data = riff((b"fmt ", fmt_chunk()), (b"data", tone(0.1)), (b"data", tone(59.4)))
    assert decoded_seconds(data) >= 59.4
    assert _measure(data).duration_ms >= 59_400


def test_a_flac_header_claiming_one_second_is_ignored():
    honest = encode("flac", "flac", tone(59.4))
    forged = forge_streaminfo(honest, 16_000)
    with av.open(io.BytesIO(forged)) as opened:
        assert opened.duration < 2 * av.time_base  # what a header-trusting probe saw
    assert decoded_seconds(forged) >= 59.4
    assert _measure(forged).duration_ms >= 59_400


def test_mp3_hidden_in_a_pcm_wav_is_measured_as_the_mp3_ffmpeg_finds():
    """A header declaring 48 kHz stereo PCM over 8 kbit/s MP3 data: FFmpeg decodes MP3."""
    mp3 = encode("mp3", "libmp3lame", tone(30))
    data = riff((b"fmt ", fmt_chunk(48_000, 2, 16)), (b"data", mp3))
    assert len(mp3) / 192_000 < 1  # what the PCM header says it holds
    audio = _measure(data)
    assert audio.codec.startswith("mp3")
    assert audio.duration_ms >= decoded_seconds(data) * 1000 - 50


# Codecs a provider's FFmpeg finds inside a PCM WAV's samples (its prober switches to
# them): each encoded once, then hidden behind a 16 kHz mono and a 48 kHz stereo header,
# at the start of the samples and after some real speech.
_HIDDEN = {
    "mp3-8k": ("mp3", "libmp3lame", 8_000),
    "mp2": ("mp2", "mp2", 16_000),
    "ac3": ("ac3", "ac3", 48_000),
    "eac3": ("eac3", "eac3", 48_000),
    "adts": ("adts", "aac", 16_000),
    "loas": ("latm", "aac", 16_000),
    "spdif": ("spdif", "ac3", 48_000),
}


@pytest.fixture(scope="module")
def hidden_codecs() -> dict[str, bytes]:
    encoded = {
        name: encode(container, codec, tone(6, rate), rate)
        for name, (container, codec, rate) in _HIDDEN.items()
    }
    ac3 = encoded["ac3"]
    encoded["ac3-byte-swapped"] = b"".join(ac3[i : i + 2][::-1] for i in range(0, len(ac3), 2))
    return encoded


def _speech_pcm() -> bytes:
    data = (FIXTURES / "speech.wav").read_bytes()
    return data[data.index(b"data") + 8 :]


@pytest.mark.parametrize("name", [*_HIDDEN, "ac3-byte-swapped"])
@pytest.mark.parametrize("after", [0, 1, 4_097, 60_000])
@pytest.mark.parametrize(("rate", "channels"), [(16_000, 1), (48_000, 2)])
def test_a_codec_ffmpeg_finds_in_pcm_samples_is_never_measured_as_the_pcm(
    hidden_codecs, name, after, rate, channels
):
    data = riff(
        (b"fmt ", fmt_chunk(rate, channels, 16)),
        (b"data", _speech_pcm()[:after] + hidden_codecs[name]),
    )
    samples = data[data.index(b"data") + 8 :]
    with av.open(io.BytesIO(data), format="wav") as opened:
        found = opened.streams.audio[0].codec_context.name  # what a provider decodes
    if not found.startswith("pcm"):
        assert may_be_disguised(samples[: probed_window(2 * channels * rate, 2 * channels)])
    try:
        audio = _measure(data)
    except AudioRefused as refused:  # AC-3, E-AC-3 and LATM are not accepted at all
        assert refused.code == "unsupported_codec" and not found.startswith("pcm")
        return
    assert audio.duration_ms >= decoded_seconds(data) * 1000 - 50


def test_truehd_found_from_one_sync_word_after_a_chain_of_sub_frames():
    """FFmpeg's TrueHD prober counts a chain of sub-frames from the buffer's start as
    frames: a single sync word at its end makes it switch (an audit built this)."""
    samples = bytearray(200_000)
    at = 20_000
    samples[at : at + 8] = b"\x00\x01\x00\x01\xf8\x72\x6f\xba"
    end = at + 4 + 4_324  # where that header says its frame ends
    samples[end : end + 1_600] = b"\x00\x01" * 800
    samples[end + 1_604 : end + 1_608] = b"\xf8\x72\x6f\xba"
    data = riff((b"fmt ", fmt_chunk(48_000, 2, 16)), (b"data", bytes(samples)))
    with av.open(io.BytesIO(data), format="wav") as opened:
        assert opened.streams.audio[0].codec_context.name == "truehd"
    assert may_be_disguised(bytes(samples[: probed_window(192_000, 4)]))
    assert _refused(data).code == "unsupported_codec"


def test_frames_after_an_id3_tag_at_the_start_of_the_samples_are_found(hidden_codecs):
    """FFmpeg's prober reads past an ID3v2 tag at the start of what it probes: three ADTS
    frames from there are enough for it, so they must be for the measure too."""
    adts = hidden_codecs["adts"]
    frames, at = [], 0
    while at < len(adts) - 7:
        size = ((adts[at + 3] & 3) << 11) | (adts[at + 4] << 3) | (adts[at + 5] >> 5)
        frames.append(adts[at : at + size])
        at += size

    def padded(frame: bytes) -> bytes:  # to ADTS's largest frame: past FFmpeg's first packet
        grown = bytearray(frame) + bytes(8191 - len(frame))
        grown[3] = (grown[3] & ~3) | (8191 >> 11)
        grown[4] = (8191 >> 3) & 0xFF
        grown[5] = (grown[5] & 0x1F) | ((8191 & 7) << 5)
        return bytes(grown)

    # Three frames, then runs of 29 broken by a byte: no run of 40 anywhere.
    broken = b"".join(padded(frame) for frame in frames[:3]) + b"".join(
        b"".join(frames[n : n + 29]) + b"\x00" for n in range(3, len(frames), 29)
    )
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x00"
    data = riff((b"fmt ", fmt_chunk(48_000, 2, 16)), (b"data", tag + broken))
    with av.open(io.BytesIO(data), format="wav") as opened:
        assert opened.streams.audio[0].codec_context.name == "aac"
    assert _measure(data).duration_ms >= decoded_seconds(data) * 1000 - 50


@pytest.mark.parametrize(
    ("rate", "channels", "packet"),
    [(16_000, 1, 2_048), (48_000, 2, 16_384), (96_000, 2, 32_768), (192_000, 2, 65_536)],
)
def test_a_codec_hidden_deep_in_what_ffmpeg_probes_is_found(hidden_codecs, rate, channels, packet):
    """FFmpeg's packets hold about a tenth of a second: the higher the header's rate, the
    deeper its prober looks (2 MB in 32 packets at 192 kHz stereo). MP2 placed deep in."""
    for after in (20 * packet, 20 * packet + 1):
        data = riff(
            (b"fmt ", fmt_chunk(rate, channels, 16)),
            (b"data", bytes(after) + hidden_codecs["mp2"] * 10),
        )
        with av.open(io.BytesIO(data), format="wav") as opened:
            assert opened.streams.audio[0].codec_context.name.startswith("mp2")
        assert _measure(data).duration_ms >= decoded_seconds(data) * 1000 - 50


@pytest.mark.parametrize("name", ["mp3-8k", "adts", "loas", "ac3", "eac3"])
def test_the_shortest_run_of_frames_ffmpeg_switches_on_is_caught(hidden_codecs, name):
    """A few frames at the start of the samples, then speech: the fewest FFmpeg's prober
    needs, found by growing them, must already send the file to FFmpeg."""
    for length in range(100, 4_000, 100):
        samples = hidden_codecs[name][:length] + _speech_pcm()
        data = riff((b"fmt ", fmt_chunk(16_000, 1, 16)), (b"data", samples))
        with av.open(io.BytesIO(data), format="wav") as opened:
            if not opened.streams.audio[0].codec_context.name.startswith("pcm"):
                break
    else:
        pytest.fail(f"FFmpeg never read {name} in the samples")
    assert may_be_disguised(samples[: probed_window(32_000, 2)])
    assert not may_be_disguised(hidden_codecs[name][: length // 8] + _speech_pcm())  # a frame


@pytest.mark.parametrize(
    "samples",
    [
        _speech_pcm(),
        (FIXTURES / "local-speech.wav").read_bytes()[44:],
        tone(5),
        bytes(200_000),
        random.Random(1).randbytes(200_000),
        b"".join(n.to_bytes(2, "little", signed=True) for n in range(-40, 41)) * 1_000,
    ],
    ids=["speech", "local-speech", "tone", "silence", "noise", "quiet-noise"],
)
def test_real_recordings_are_measured_without_the_slow_probe(samples):
    assert not may_be_disguised(samples[: probed_window(32_000, 2)])


@pytest.mark.parametrize(
    ("word", "times", "offset", "maybe"),
    [
        (b"\x7f\xfe\x80\x01", 4, 0, True),  # DTS: four sync words
        (b"\x7f\xfe\x80\x01", 3, 0, False),  # three are not enough for its prober
        (b"\x1f\xff\xe8\x00", 4, 1, False),  # it reads even offsets only
        (b"\xfe\x7f\x01\x80", 4, 0, True),  # DTS, its little-endian core
        (b"\xf8\x72\x6f\xba", 1, 1, True),  # TrueHD, anywhere: one after sub-frames
        (b"\x72\xf8\x1f\x4e", 2, 1, True),  # S/PDIF bursts
    ],
)
def test_sync_words_a_prober_counts_send_the_file_to_ffmpeg(word, times, offset, maybe):
    samples = bytearray(bytes(offset) + tone(4))
    for n in range(times):
        at = offset + 6_000 * (n + 1)
        samples[at : at + 4] = word
    assert may_be_disguised(bytes(samples)) is maybe


@st.composite
def _probed_samples(draw, sources: list[bytes]) -> bytes:
    """Samples as a tenant could build them: speech, noise, silence or a codec's bytes,
    with codec frames, sync words and AC-3 preambles laid over them, an ID3v2 tag at the
    start, leading zeros, any length."""
    source = draw(st.sampled_from(sources))
    at = draw(st.integers(0, len(source)))
    samples = bytearray(
        draw(
            st.one_of(
                st.binary(max_size=3_000),
                st.just(source[at : at + draw(st.integers(0, 140_000))]),
                st.builds(bytes, st.integers(0, 5_000)),
            )
        )
    )
    syncs = [sync.to_bytes(4, "big") for sync in disguise._SYNC_WORDS]
    laid = st.one_of(
        st.builds(lambda word, times: word * times, st.sampled_from(syncs), st.integers(1, 4)),
        st.builds(
            lambda a, n: source[a : a + n], st.integers(0, len(source)), st.integers(1, 30_000)
        ),
        st.just(b"\x01\x10" + bytes(14)),
    )
    for chunk, where in draw(st.lists(st.tuples(laid, st.floats(0, 1)), max_size=6)):
        start = int(where * len(samples))
        samples[start : start + len(chunk)] = chunk
    if draw(st.booleans()) and len(samples) >= 10:
        samples[:10] = b"ID3\x04\x00\x00\x00\x00" + bytes(
            draw(st.lists(st.integers(0, 127), min_size=2, max_size=2))
        )
    return bytes(draw(st.integers(0, 40))) + bytes(samples)


def _with_preambles(ac3: bytes) -> bytes:
    """AC-3's frames with the 16-byte ``01 10`` preamble its prober steps over between them."""
    frames, at = [], 0
    while ac3[at : at + 2] == b"\x0b\x77" and at + 6 < len(ac3):
        code = ac3[at + 4]
        size = disguise._ac3_sizes()[min(code & 0x3F, 38) * 4 + (code >> 6)]
        frames.append(ac3[at : at + size])
        at += size
    assert len(frames) > 10
    return (b"\x01\x10" + bytes(14)).join(frames)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_compiled_scan_answers_as_the_numpy_it_replaced(hidden_codecs, data):
    """``_scan.c`` walks a tenant's bytes in C: whatever they hold, its answer is the
    NumPy implementation's (``tests/disguise_reference.py``), which FFmpeg's own prober
    checked above; and reads of every length stay inside the buffer."""
    sources = [_speech_pcm(), *hidden_codecs.values(), _with_preambles(hidden_codecs["ac3"])]
    samples = data.draw(_probed_samples(sources))
    maybe = may_be_disguised(samples)
    event(f"maybe: {maybe}")
    assert maybe is disguise_reference.may_be_disguised(samples)


def test_a_file_built_to_need_gigabytes_is_read_in_a_capped_worker():
    """FFmpeg reads what it must demux or decode in a worker process: over its memory cap
    the file is refused, the gateway's own memory untouched, and the next file is read."""
    bomb = mp4_index_bomb()
    assert len(bomb) < 40_000
    sandbox = Sandbox(768 << 20)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(AudioRefused) as refused:
            measure(io.BytesIO(bomb), len(bomb), Limits(), sandbox)
        assert refused.value.code in ("audio_too_complex", "invalid_audio", "empty_audio")
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
        speech = (FIXTURES / "speech.mp3").read_bytes()
        audio = measure(io.BytesIO(speech), len(speech), Limits(), sandbox)
        assert abs(audio.duration_ms - SPEECH_MS) < 120
    finally:
        sandbox.close()


def test_opus_packets_are_counted_from_their_toc_byte():
    assert opus_samples(bytes([16 << 3])) == 120  # CELT 2.5 ms, one frame
    assert opus_samples(bytes([(31 << 3) | 1])) == 1920  # CELT 20 ms, two frames
    assert opus_samples(bytes([(3 << 3) | 3, 3])) == 3 * 2880  # SILK 60 ms, three frames
    assert opus_samples(bytes([(12 << 3) | 2])) == 960  # hybrid 10 ms, two frames


# --- Bombs and absurd claims -----------------------------------------------------------


@pytest.mark.parametrize("hours", [10, 36])
def test_hours_of_silent_flac_claiming_one_second_are_refused(hours):
    bomb = silent_flac(hours * 3600, claim_samples=8_000)
    assert len(bomb) < 300_000
    refused = _refused(bomb)
    assert refused.code == "audio_too_long"
    assert "10800 seconds" in refused.message and "max_audio_seconds" in refused.message


def test_a_models_own_limit_is_named():
    refused = _refused(wav(tone(61)), max_seconds=60)
    assert refused.code == "audio_too_long"
    assert "60 seconds" in refused.message


def test_a_1_hz_wav_claiming_four_billion_samples_is_refused():
    data = riff((b"fmt ", fmt_chunk(rate=1)), (b"data", b"\0" * 64), size_override={1: 2**32 - 1})
    refused = _refused(data)
    assert refused.code == "sample_rate_out_of_range"
    assert "1 Hz" in refused.message


def _zeroed_wav(**fields: int) -> bytes:
    header = {"channels": 1, "rate": TONE_RATE, "align": 2, **fields}
    fmt = struct.pack("<HHIIHH", 1, header["channels"], header["rate"], 0, header["align"], 16)
    return riff((b"fmt ", fmt), (b"data", tone(1)))


@pytest.mark.parametrize("field", ["channels", "rate"])
def test_a_wav_header_of_zeros_is_refused(field):
    _refused(_zeroed_wav(**{field: 0}))


def test_a_wav_header_without_a_block_size_is_measured_as_ffmpeg_plays_it():
    assert _measure(_zeroed_wav(align=0)).duration_ms == 1_000


def test_too_many_channels_are_refused():
    data = riff((b"fmt ", fmt_chunk(channels=64)), (b"data", b"\0" * 1280))
    assert _refused(data).code == "too_many_channels"


def test_a_wav_of_empty_junk_chunks_is_refused_after_a_bounded_scan():
    data = riff((b"fmt ", fmt_chunk()), *[(b"JUNK", b"")] * 5_000, (b"data", tone(1)))
    refused = _refused(data)
    assert refused.code == "too_many_chunks"
    assert str(MAX_WAV_CHUNKS) in refused.message


def test_packets_that_decode_to_nothing_are_capped():
    """Opus packets whose TOC says zero frames: free to send, slow to read."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48_000, layout="mono")
        stream.codec_context.open()
        for n in range(110_000):
            packet = av.Packet(bytes([(16 << 3) | 3, 0]))
            packet.stream, packet.time_base = stream, Fraction(1, 48_000)
            packet.pts = packet.dts = n
            out.mux(packet)
    refused = _refused(buffer.getvalue(), max_seconds=60)
    assert refused.code == "too_many_packets"


# --- FFmpeg may open only the upload -----------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"ffconcat version 1.0\nfile {path}\n",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{path}\n#EXT-X-ENDLIST\n",
        b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 5004 RTP/AVP 0\n",
    ],
    ids=["ffconcat", "hls", "sdp"],
)
def test_playlists_and_sessions_are_not_audio_and_read_nothing(payload, tmp_path):
    """The same answer whether the named file exists, is missing or unreadable: no oracle,
    no bytes of it, no socket bound."""
    readable = FIXTURES / "speech.wav"
    unreadable = tmp_path / "secret.wav"
    unreadable.write_bytes(readable.read_bytes())
    unreadable.chmod(0)
    udp_before = Path("/proc/net/udp").read_text().count("\n")
    answers = set()
    for path in (readable, tmp_path / "missing.wav", unreadable):
        refused = _refused(payload.replace(b"{path}", str(path).encode()))
        answers.add((refused.code, refused.message))
    assert len(answers) == 1
    assert answers.pop()[0] == "invalid_audio"
    assert Path("/proc/net/udp").read_text().count("\n") == udp_before


@pytest.mark.parametrize(("container", "codec"), [("mp4", "aac"), ("webm", "libopus")])
def test_metadata_that_is_not_utf8_is_not_an_error(container, codec):
    data = _with_bad_title(container, codec)
    assert b"\xff\xfe\xfd" in data
    assert _measure(data).duration_ms >= 2000


def _with_bad_title(container: str, codec: str) -> bytes:
    pcm = tone(2)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        out.metadata["title"] = "MARKER-MARKER"
        stream = out.add_stream(codec, rate=48_000 if codec == "libopus" else 16_000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = 16_000
        for resampled in resampler.resample(frame):
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return buffer.getvalue().replace(b"MARKER-MARKER", b"\xff\xfe\xfd" + b"X" * 10)


# --- The WAV walk, checked against FFmpeg itself ---------------------------------------

_CHUNK = st.one_of(
    st.tuples(st.just(b"data"), st.integers(0, 3000)),
    st.tuples(st.sampled_from([b"JUNK", b"LIST", b"fact", b"bext"]), st.integers(0, 64)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(_CHUNK, min_size=1, max_size=6),
    forged=st.dictionaries(st.integers(0, 6), st.sampled_from([0, 1, 7, 2**32 - 1, 99_999])),
    tail=st.binary(max_size=40),
)
def test_the_wav_walk_never_counts_less_than_ffmpeg_plays(chunks, forged, tail):
    body = [(b"fmt ", fmt_chunk())]
    for tag, length in chunks:
        body.append((tag, tone(length / 16_000)[: length * 2] if tag == b"data" else b"x" * length))
    data = riff(*body, size_override={i + 1: v for i, v in forged.items()}) + tail
    try:
        played = decoded_seconds(data, "wav")
    except (av.FFmpegError, IndexError):
        played = 0.0
    try:
        measured = _measure(data).duration_ms
    except AudioRefused:
        assert played * 1000 < 1, "refused audio that FFmpeg plays"
        return
    assert measured >= int(played * 1000), (measured, played)


@settings(max_examples=1_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rate=st.sampled_from([8_000, 16_000, 44_100, 48_000, 4_000, 384_000, 3_999, 384_001, 0]),
    channels=st.sampled_from([1, 1, 2, 2, 6, 16, 0, 17]),
    stated=st.sampled_from(["exact", "exact", "exact", 0, 0xFFFFFFFF, 0x766F6F6D, 0x70797466]),
    flips=st.lists(st.tuples(st.integers(0, 47), st.integers(0, 255)), max_size=1),
)
def test_a_header_read_without_ffmpeg_is_read_so_by_ffmpeg(rate, channels, stated, flips):
    """``declares_pcm16`` stands in for opening the file with FFmpeg: whenever it says
    "16-bit PCM at this rate and channel count", FFmpeg's allow-listed prober and WAV
    demuxer say the same (and ``moov`` or ``ftyp`` in the RIFF size never pass)."""
    pcm = tone(0.2) * max(channels, 1)
    body = (
        b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 2, 2 * channels, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
    size = 4 + len(body) if stated == "exact" else stated
    data = bytearray(b"RIFF" + struct.pack("<I", size) + b"WAVE" + body)
    for at, value in flips:
        data[at] = value
    if not declares_pcm16(bytes(data[:64]), len(data), range(4_000, 384_001), range(1, 17)):
        return
    try:
        walked = walk(io.BytesIO(bytes(data)), 0, len(data))
    except AudioRefused:
        return  # refused before the header is trusted
    event("checked against FFmpeg")
    with av.open(io.BytesIO(bytes(data)), options={"probesize": "32"}) as opened:
        (stream,) = opened.streams.audio
        context = stream.codec_context
        assert (opened.format.name, context.name) == ("wav", "pcm_s16le")
        assert (context.sample_rate, context.channels) == (walked.sample_rate, walked.channels)


def test_a_plain_wav_is_measured_exactly():
    assert _measure(wav(tone(12.345))).duration_ms == 12_345
    stereo = wav(tone(3.0) * 2, rate=16_000, channels=2)
    assert _measure(stereo).duration_ms == 3_000
    assert _measure(wav(tone(1.0), rate=44_100)).duration_ms == 363  # 16,000: 362.8 ms, up


# --- What is forwarded -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "container", "sent"),
    [
        ("speech.wav", "wav", "speech.wav"),
        ("speech.MP3", "mp3", "speech.mp3"),
        ("voice.m4a", "mp4", "voice.m4a"),
        ("recording", "webm", "recording.webm"),
        ("a.wav", "flac", "a.flac"),  # named for the format FFmpeg will decode
        ('x";\r\nevil: 1.mp3', "mp3", "x____evil_ 1.mp3"),
        ("", "ogg", "audio.ogg"),
    ],
)
def test_the_upload_is_forwarded_under_a_name_for_its_format(given, container, sent):
    assert forwarded_filename(given, container) == sent


def test_bytes_are_measured_not_the_tenants_name_for_them():
    assert _measure(encode("flac", "flac", tone(2))).container == "flac"
    assert _measure(encode("ogg", "libopus", tone(2))).container == "ogg"


# --- What the provider's decoder plays, whatever the container claims -----------------


@pytest.mark.parametrize("into", ["mp4", "matroska"])
@pytest.mark.parametrize(("source", "codec"), [("mp3", "libmp3lame"), ("mp4", "aac")])
@pytest.mark.parametrize("per_packet", [1, 10])
def test_packets_stamped_short_or_holding_several_frames_are_counted_as_decoded(
    source, codec, into, per_packet
):
    """FFmpeg's MP3 and AAC decoders decode every frame a packet holds, whatever its
    timestamps say: ten frames to a packet once billed a tenth."""
    data = repacked(
        encode(source, codec, tone(30)), {"mp4": "mov"}.get(source, source), into, per_packet
    )
    played = decoded_seconds(data)
    assert played > 29
    assert _measure(data).duration_ms >= int(played * 1000) - 1


def test_flac_frame_numbers_and_a_missing_rate_do_not_shorten_it():
    """Frames numbered 0, 1, 1, 1… with "rate: see STREAMINFO" gave the pts span of one."""
    frames = 200
    data = silent_flac(frames * 65_535 / 8_000, numbers=[0] + [1] * (frames - 1))
    played = decoded_seconds(data)
    assert played > 1600
    assert _measure(data, max_seconds=3600).duration_ms >= int(played * 1000) - 1


@pytest.mark.parametrize("into", ["matroska", "mp4"])
def test_frames_that_change_their_rate_are_counted_at_their_own(into):
    """Four FLAC frames at 192 kHz, then fifty at 8 kHz: counted at the rate seen first,
    410 s became 18 s."""
    rates = [192_000] * 4 + [8_000] * 50
    native = silent_flac(len(rates) * 65_535 / 192_000, rate=192_000, frame_rates=rates)
    data = repacked(native, "flac", into, 1)
    played = decoded_seconds(data)
    assert played > 400
    assert _measure(data).duration_ms >= int(played * 1000) - 1


def test_a_file_ffmpeg_would_read_as_another_format_is_refused():
    """An ID3 tag of over a mebibyte holding MPEG-TS, before a short MP3: FFmpeg's prober
    reads the tag's contents, and decodes two minutes of AAC from it."""
    null_packet = b"\x47\x1f\xff\x10" + b"\xff" * 184
    ts = mpegts_aac(120)
    ts += null_packet * (((1 << 20) - len(ts)) // 188 + 1)  # past FFmpeg's 1 MiB ID3 skip
    mp3 = encode("mp3", "libmp3lame", tone(0.5))
    data = id3_tag(ts) + mp3[id3v2_end(mp3[:16]) :] + null_packet * 20
    assert decoded_seconds(data) > 100
    assert _refused(data).code in ("invalid_audio", "ambiguous_container")


def _full_prober_reads(data: bytes) -> str:
    """The format a provider's FFmpeg (every demuxer, no whitelist) reads ``data`` as."""
    with av.open(io.BytesIO(data), metadata_errors="replace") as opened:
        return opened.format.name


def _act_lookalike(rate: int) -> bytes:
    """An 8 kHz PCM WAV whose first samples are silence and one byte: what FFmpeg's ACT
    probe looks for (it outscores the WAV demuxer's)."""
    data = bytearray(wav(tone(30, rate=rate), rate=rate))
    data[44:512] = bytes(468)
    data[256] = 0x84
    return bytes(data)


def test_a_wav_a_full_ffmpeg_reads_as_act_is_refused():
    """A provider's FFmpeg would decode it as G.729 (8 kbit/s): 16 times the 8 kHz 16-bit
    PCM duration its header states, and this gateway's own FFmpeg may not open ACT."""
    data = _act_lookalike(8_000)
    assert _full_prober_reads(data) == "act"
    assert _refused(data).code == "ambiguous_container"
    # A byte either side of the signature and it is plain WAV again, to both.
    plain = bytearray(data)
    plain[300] = 1
    assert _full_prober_reads(bytes(plain)) == "wav"
    assert _measure(bytes(plain)).duration_ms == 30_000


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "mp4", "mpeg", "ogg", "webm"])
def test_what_is_measured_is_the_format_a_full_ffmpeg_reads(ext):
    """Earmark opens uploads with an allow-list of demuxers; a provider's FFmpeg has them
    all. Each accepted format is read as the same format by both."""
    data = (FIXTURES / f"speech.{ext}").read_bytes()
    assert DEMUXERS[_measure(data).container] in _full_prober_reads(data).split(",")


def test_apple_lossless_is_not_accepted():
    assert _refused(encode("mp4", "alac", tone(1))).code == "unsupported_codec"

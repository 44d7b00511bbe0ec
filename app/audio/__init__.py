"""How long an upload plays, measured as a decoder will play it, by bounded code.

An upload is hostile input, and FFmpeg is a parser of hostile input. So an upload is
opened only by the demuxer its first bytes name from an allow-list, never by FFmpeg's own
guess (``container``), and read under limits of time, packets, duration, sample rate and
channels, each refused with a 400 that names it (``refusals``). The duration that holds
budget, counts against rate limits and bills (``measure``) is counted from what a decoder
decodes, never from a header's claim: the PCM bytes of every ``data`` chunk of a WAV
(``wav``); each Opus packet's TOC byte, the fixed frame size of MP3 and AAC packets,
FFmpeg's parsers for FLAC and Vorbis, or a decode where only the container states what a
packet holds (``packets``). A file whose timestamps claim more is billed the larger.
"""

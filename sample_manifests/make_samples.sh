#!/usr/bin/env bash
# Regenerate the sample archive (sample_manifests/archive/) from sentences.txt, deterministically,
# and rewrite batchscribe/data/samples.json (sha256 of each clip -> sentence, duration, file,
# language), the table the emulator uses to answer sample clips with their real sentence.
#
# Needs: espeak-ng, sox, ffmpeg/ffprobe, python3 (apt-get install -y espeak-ng sox ffmpeg).
# Usage: sample_manifests/make_samples.sh   (ARCHIVE_DIR / SAMPLES_JSON override the outputs)
# Every clip is 16 kHz mono. Encoders run with bitexact flags and no metadata so a rerun with the
# same tool versions gives byte-identical files (samples.json is rewritten either way).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Overridable so a test can regenerate into a scratch folder and compare.
archive="${ARCHIVE_DIR:-$here/archive}"
table="${SAMPLES_JSON:-$here/../batchscribe/data/samples.json}"
python="${PYTHON:-python3}"

for tool in espeak-ng sox ffmpeg ffprobe "$python"; do
    command -v "$tool" >/dev/null || { echo "make_samples.sh: $tool not found" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$archive"
mkdir -p "$archive"
: > "$tmp/rows.tsv"

ffin=(-nostdin -hide_banner -loglevel error -y)
bitexact=(-map_metadata -1 -fflags +bitexact -flags:a +bitexact)

while IFS=$'\t' read -r clip language voice sentence; do
    [[ -z "$clip" || "$clip" == \#* ]] && continue
    out="$archive/$clip"
    mkdir -p "$(dirname "$out")"
    # espeak-ng speaks at 22.05 kHz; sox resamples to 16 kHz mono 16-bit and pads 0.2 s each side
    # (-R -D: repeatable, no random dither, so the bytes and their sha256 do not change per run).
    espeak-ng -v "$voice" -s 150 -w "$tmp/raw.wav" "$sentence"
    sox -R -D "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/clip.wav" pad 0.2 0.2
    case "$clip" in
        *.wav)  ffmpeg "${ffin[@]}" -i "$tmp/clip.wav" "${bitexact[@]}" -c:a pcm_s16le "$out" ;;
        *.flac) ffmpeg "${ffin[@]}" -i "$tmp/clip.wav" "${bitexact[@]}" -c:a flac "$out" ;;
        *.mp3)  ffmpeg "${ffin[@]}" -i "$tmp/clip.wav" "${bitexact[@]}" -c:a libmp3lame -b:a 32k -write_xing 1 "$out" ;;
        *.ogg)  ffmpeg "${ffin[@]}" -i "$tmp/clip.wav" "${bitexact[@]}" -c:a libvorbis -q:a 2 "$out" ;;
        *) echo "make_samples.sh: unsupported extension in $clip" >&2; exit 1 ;;
    esac
    duration="$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$out")"
    sha="$(sha256sum "$out" | cut -d' ' -f1)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$sha" "$clip" "$language" "$duration" "$sentence" >> "$tmp/rows.tsv"
    echo "  $clip  ${duration}s  $(wc -c < "$out") bytes"
done < "$here/sentences.txt"

"$python" - "$tmp/rows.tsv" "$table" <<'PY'
import json
import sys

rows, table = sys.argv[1], sys.argv[2]
samples = {}
with open(rows, encoding="utf-8") as fh:
    for line in fh:
        sha, clip, language, duration, sentence = line.rstrip("\n").split("\t")
        samples[sha] = {
            "sentence": sentence,
            "duration": round(float(duration), 3),
            "file": clip,
            "language": language,
        }
with open(table, "w", encoding="utf-8") as fh:
    json.dump(samples, fh, indent=2, ensure_ascii=False, sort_keys=True)
    fh.write("\n")
print(f"wrote {len(samples)} clips to {table}")
PY
du -sh "$archive"

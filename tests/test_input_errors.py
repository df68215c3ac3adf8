"""Bad input named where it is: the row and column of a bad cell or byte, the rows of a repeated
id, and the file of an audio clip that cannot be decoded or is cut off."""

import shutil

import pytest
from conftest import SHARED_DATA

from encoders import EncoderInputError
from encoders.media import load_audio
from pipeline.config import load_config
from pipeline.data import prepare
from pipeline.errors import DataError

CLIP = SHARED_DATA / "emotify" / "clips" / "classical_001.mp3"


def run(cfg_path, *overrides):
    return prepare(load_config(cfg_path, list(overrides)), progress=False)


def write_events(root, stamps):
    skus = ("007", "008", "009", "010")
    rows = [f"u{i % 7},{skus[i % 4]},{t},3" for i, t in enumerate(stamps)]
    (root / "events.csv").write_text("customer,sku,day,stars\n" + "\n".join(rows) + "\n")


# --- timestamps ---------------------------------------------------------------------------------

def test_bad_unix_time_names_its_own_row(tiny_config, tiny_data):
    stamps = [str(1_600_000_000 + 60 * i) for i in range(130)]
    stamps[120] = "16OOOOOOOO"  # data row 121, letters O for zeros
    write_events(tiny_data, stamps)
    with pytest.raises(DataError, match=r"events\.csv: row 121: timestamp column 'day' has '16OOOOOOOO', "
                                        r"not a time \(129 of its 130 rows hold unix seconds\)"):
        run(tiny_config)
    stamps[120] = ""
    write_events(tiny_data, stamps)
    with pytest.raises(DataError, match=r"events\.csv: row 121: timestamp column 'day' is empty"):
        run(tiny_config)


def test_unix_time_among_dates_names_its_row(tiny_config, tiny_data):
    stamps = [f"2024-01-{d:02d}" for d in range(1, 29)]
    stamps[20] = "1600000000"
    write_events(tiny_data, stamps)
    with pytest.raises(DataError, match=r"row 21: timestamp column 'day' has '1600000000', not a time"):
        run(tiny_config)


# --- text encodings -----------------------------------------------------------------------------

def test_non_utf8_byte_names_row_column_and_file_offset(tiny_config, tiny_data):
    head = b'sku,name,desc,img\n007,Red hat,"A hat,\nred",\n\n008,Blue scarf,,\n009,'
    (tiny_data / "items.csv").write_bytes(head + b"Caf\xe9 sock,Warm,\n010,Boot,,\n")
    # the byte is on line 6 of the file but in data row 3: a quoted newline and a blank line precede it
    with pytest.raises(DataError, match=rf"items\.csv: not valid utf-8 text at byte {len(head) + 3} \(0xe9, "
                                        r"invalid continuation byte; row 3, column 'name'\); "
                                        r"set data\.items\.encoding"):
        run(tiny_config)


def test_non_utf8_byte_in_the_header(tiny_config, tiny_data):
    (tiny_data / "items.csv").write_bytes(b"sku,n\xe4me,desc,img\n007,a,,\n")
    with pytest.raises(DataError, match=r"at byte 5 \(0xe4, invalid continuation byte; the header, field 2\)"):
        run(tiny_config)


def test_non_utf8_byte_in_a_tsv_interactions_file(tiny_config, tiny_data):
    head = b"customer\tsku\tday\tstars\nann\t007\t2024-01-01\t3\nb"
    (tiny_data / "ev.tsv").write_bytes(head + b"\xf6b\t008\t2024-01-02\t3\n")
    with pytest.raises(DataError, match=rf"ev\.tsv: not valid utf-8 text at byte {len(head)} \(0xf6, .*; row 2, "
                                        r"column 'customer'\); set data\.interactions\.encoding"):
        run(tiny_config, "data.interactions.path=ev.tsv")


# --- duplicate item ids -------------------------------------------------------------------------

def test_duplicate_ids_error_names_both_rows_and_the_option(tiny_config, tiny_data):
    with (tiny_data / "items.csv").open("a") as f:
        f.write("008,Blue scarf again,,\n009,Green sock again,,\n")
    with pytest.raises(DataError, match=r"duplicate item id '008' in column 'sku' at rows 2 and 5 "
                                        r"\(2 repeated rows in all\).*data\.items\.duplicates=first"):
        run(tiny_config)


def test_duplicates_first_keeps_each_ids_first_row(tiny_config, tiny_data):
    with (tiny_data / "items.csv").open("a") as f:
        f.write("008,Blue scarf again,Wool,\n011,Grey cap,Cotton,\n009,Green sock again,,\n")
    p = run(tiny_config, "data.items.duplicates=first")
    assert list(p.items["item_id"]) == ["007", "008", "009", "010", "011"]
    assert p.items["text"][1] == "Blue scarf." and p.items["text"][4] == "Grey cap. Cotton"
    s = p.stats()
    assert s["dropped"]["duplicate_items"] == 2 and s["items"] == 5 and s["interactions"] == 12


# --- audio files --------------------------------------------------------------------------------

def test_undecodable_and_empty_audio_say_so(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all " * 200)
    with pytest.raises(EncoderInputError, match=r"cannot decode audio .*junk\.mp3: no wav/flac/ogg/mp3") as info:
        load_audio(str(junk), 16000, 5.0)
    assert "does not exist" not in str(info.value)
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(EncoderInputError, match=r"audio file is empty \(0 bytes\): .*empty\.mp3"):
        load_audio(str(empty), 16000, 5.0)


def test_truncated_mp3_is_refused_naming_the_file(tmp_path):
    if not CLIP.is_file():
        pytest.skip(f"real MP3 clip not found at {CLIP} (set MODALREC_DATA to the folder holding emotify)")
    whole = tmp_path / "whole.mp3"
    shutil.copyfile(CLIP, whole)
    assert len(load_audio(str(whole), 16000, 2.0)) == 32000  # the intact file (ID3v1 tag and all) passes
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[:3000])
    with pytest.raises(EncoderInputError, match=r"audio file is truncated \(its last MP3 frame has \d+ of its "
                                                r"41\d bytes\): .*cut\.mp3"):
        load_audio(str(cut), 16000, 2.0)
    # a cut file that still ends in an ID3v1 tag (a tagger rewrote it) is cut all the same
    tagged = tmp_path / "tagged.mp3"
    tagged.write_bytes(data[:200_000] + data[-128:])
    with pytest.raises(EncoderInputError, match=r"truncated.*tagged\.mp3"):
        load_audio(str(tagged), 16000, 2.0)

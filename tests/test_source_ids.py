"""Source row ids are part of every store: a change to how they are computed would orphan every cached request.

The ids below were computed by the first implementation (json.dumps per row); any faster one must give the same.
"""

import datetime

from datagen.sources.files import with_ids


def test_source_ids_stay_what_existing_stores_hold():
    rows = [{"q": "2+2?", "a": 4}, {"a": 4, "q": "2+2?"}, {"q": "naïve café ✓", "tags": ["x", {"y": 1}]},
            {"_id": "mine", "q": "own id"}, {"when": datetime.date(2024, 1, 2)}, {"q": "2+2?", "a": 4}]
    out = with_ids("s", rows)
    assert [r["_id"] for r in out] == ["818921e17d78e56f1268", "389d889f8130aba02de0", "974a204fe96f7b54b458",
                                       "07b4312c968499be0dbb", "687bd01fcd25f953c334", "6c83f5317b4986d03c0d"]
    # `_id` comes first, a row's own `_id` is replaced, the other columns keep their order and values
    assert list(out[1]) == ["_id", "a", "q"] and out[3] == {"_id": "07b4312c968499be0dbb", "q": "own id"}
    assert out[4]["when"] == datetime.date(2024, 1, 2) and rows[3]["_id"] == "mine"


def dictout():
    # columnar answer: {"label": [...], "score": [...]}
    return lambda batch: {"label": ["cat" for _ in batch], "score": [0.9 for _ in batch]}
def frame():
    import pandas as pd
    return lambda batch: pd.DataFrame({"label": ["cat"] * len(batch), "score": [0.9] * len(batch)})
def text():
    return lambda batch: "no"

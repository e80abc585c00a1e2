"""Write breast_cancer.csv: scikit-learn's Wisconsin breast cancer table (569 rows, 30
numeric measurements, diagnosis malignant or benign), which ships inside its wheel.

    python prepare.py                 # -> ./breast_cancer.csv
"""

from sklearn.datasets import load_breast_cancer

cancer = load_breast_cancer(as_frame=True)
frame = cancer.frame.rename(columns=lambda c: c.replace(" ", "_"))
frame["diagnosis"] = [str(cancer.target_names[t]) for t in frame.pop("target")]
frame.to_csv("breast_cancer.csv", index=False)
print(f"breast_cancer.csv: {len(frame)} rows, {frame.shape[1] - 1} feature columns, label `diagnosis`")

"""What leaves the store: exports (export), the dataset card (card), the Hub (push), the HTML report and its charts
(report, svg), and `datagen status` (status)."""

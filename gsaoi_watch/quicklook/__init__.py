"""Quick-look output: pictures, the night summary page, QA formatting."""

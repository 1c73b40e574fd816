"""The calibration database: peewee models, association rules, caldb."""

"""``loyalty-ml``: the top of the house, composing data, features, training and serving."""

"""Where benchmark and outcome data live, and how to get them."""

"""`datagen review`: a local web page to look at a store's rows, correct them, and measure a judge against people."""

module service/orders

go 1.24

require tessera v0.0.0

replace tessera => ./tessera

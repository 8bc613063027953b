module tessera

go 1.24

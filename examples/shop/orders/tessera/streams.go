package tessera

import (
	"errors"

	"tessera/internal/wit/imports/wasi_io_streams"
)

// readAll reads an input stream to its end.
func readAll(stream *wasi_io_streams.InputStream) ([]byte, error) {
	var body []byte
	for {
		res := stream.BlockingRead(64 * 1024)
		if res.IsErr() {
			e := res.Err()
			if e.Tag() == wasi_io_streams.StreamError_Closed {
				return body, nil
			}
			return body, streamError(e)
		}
		body = append(body, res.Ok()...)
	}
}

// writeAll writes data to an output stream and flushes it, waiting whenever the stream
// has no room.
func writeAll(stream *wasi_io_streams.OutputStream, data []byte) error {
	for len(data) > 0 {
		res := stream.CheckWrite()
		if res.IsErr() {
			return streamError(res.Err())
		}
		n := res.Ok()
		if n == 0 {
			pollable := stream.Subscribe()
			pollable.Block()
			pollable.Drop()
			continue
		}
		if n > uint64(len(data)) {
			n = uint64(len(data))
		}
		if w := stream.Write(data[:n]); w.IsErr() {
			return streamError(w.Err())
		}
		data = data[n:]
	}
	if f := stream.BlockingFlush(); f.IsErr() {
		return streamError(f.Err())
	}
	return nil
}

func streamError(e wasi_io_streams.StreamError) error {
	if e.Tag() == wasi_io_streams.StreamError_Closed {
		return errors.New("stream closed")
	}
	ioErr := e.LastOperationFailed()
	msg := ioErr.ToDebugString()
	ioErr.Drop()
	return errors.New(msg)
}

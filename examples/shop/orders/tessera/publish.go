package tessera

import (
	"tessera/internal/wit/imports/tessera_messaging_producer"
	witTypes "tessera/internal/wit/types"
)

// PublishError is a message the platform refused. Kind is "invalid-topic", "too-large"
// or "unavailable".
type PublishError struct {
	Kind    string
	Message string
}

func (e *PublishError) Error() string { return "publish: " + e.Kind + ": " + e.Message }

// Publish queues data for a topic of the app and returns the message's id (subscribers
// receive it as the ce-id header). contentType, if not "", becomes the delivery's
// content-type. The message is sent only if the current request completes with a status
// below 500.
func Publish(topic string, data []byte, contentType string) (string, error) {
	ct := witTypes.None[string]()
	if contentType != "" {
		ct = witTypes.Some(contentType)
	}
	res := tessera_messaging_producer.Publish(topic, data, ct)
	if res.IsErr() {
		e := res.Err()
		switch e.Tag() {
		case tessera_messaging_producer.Error_InvalidTopic:
			return "", &PublishError{Kind: "invalid-topic", Message: e.InvalidTopic()}
		case tessera_messaging_producer.Error_TooLarge:
			return "", &PublishError{Kind: "too-large", Message: e.TooLarge()}
		default:
			return "", &PublishError{Kind: "unavailable", Message: e.Unavailable()}
		}
	}
	return res.Ok(), nil
}

// PublishJSON publishes v encoded as JSON, with content type application/json.
func PublishJSON(topic string, v any) (string, error) {
	data, err := marshalJSON(v)
	if err != nil {
		return "", err
	}
	return Publish(topic, data, "application/json")
}

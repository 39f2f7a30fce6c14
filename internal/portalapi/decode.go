package portalapi

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrMalformedPayload wraps the failure to decode the payload of a known event.
var ErrMalformedPayload = errors.New("portalapi: malformed payload")

type decoder func(payload json.RawMessage) (Message, error)

func into[T Message](payload json.RawMessage) (Message, error) {
	var v T
	if err := json.Unmarshal(payload, &v); err != nil {
		return nil, err
	}
	return v, nil
}

func clientIngress(event string) decoder {
	switch event {
	case EventInit:
		return decodeClientInit
	case EventConfigChanged:
		return into[ConfigChanged]
	case EventResourceCreatedOrUpdated:
		return decodeResourceCreatedOrUpdated
	case EventResourceDeleted:
		return into[ResourceDeleted]
	case EventRelaysPresence:
		return into[RelaysPresence]
	case EventFlowCreated:
		return into[FlowCreated]
	case EventFlowCreationFailed:
		return into[FlowCreationFailed]
	case EventIceCandidates:
		return into[GatewayIceCandidates]
	case EventInvalidateIceCandidates:
		return into[InvalidatedGatewayIceCandidates]
	}
	return nil
}

func clientEgress(event string) decoder {
	switch event {
	case EventCreateFlow:
		return into[CreateFlow]
	case EventBroadcastIceCandidates:
		return into[BroadcastGatewayIceCandidates]
	case EventBroadcastInvalidatedIceCandidates:
		return into[BroadcastInvalidatedGatewayIceCandidates]
	case EventReportConnections:
		return decodeReportConnections
	}
	return nil
}

func gatewayIngress(event string) decoder {
	switch event {
	case EventInit:
		return decodeGatewayInit
	case EventAuthorizeFlow:
		return into[AuthorizeFlow]
	case EventRequestConnection:
		return into[RequestConnection]
	case EventAllowAccess:
		return into[AllowAccess]
	case EventRejectAccess:
		return into[RejectAccess]
	case EventIceCandidates:
		return into[ClientIceCandidates]
	case EventInvalidateIceCandidates:
		return into[InvalidatedClientIceCandidates]
	case EventRelaysPresence:
		return into[RelaysPresence]
	case EventResourceUpdated:
		return decodeResourceUpdated
	}
	return nil
}

func gatewayEgress(event string) decoder {
	switch event {
	case EventFlowAuthorized:
		return into[FlowAuthorized]
	case EventConnectionReady:
		return into[ConnectionReady]
	case EventBroadcastIceCandidates:
		return into[BroadcastClientIceCandidates]
	case EventBroadcastInvalidatedIceCandidates:
		return into[BroadcastInvalidatedClientIceCandidates]
	case EventReportConnections:
		return decodeReportConnections
	}
	return nil
}

func relayIngress(event string) decoder {
	switch event {
	case EventInit:
		return into[RelayInit]
	}
	return nil
}

// DecodeClientIngress decodes a message the portal pushes to a client.
func DecodeClientIngress(event string, payload json.RawMessage) (Message, error) {
	return decode(clientIngress, event, payload)
}

// DecodeClientEgress decodes a message a client pushes to the portal.
func DecodeClientEgress(event string, payload json.RawMessage) (Message, error) {
	return decode(clientEgress, event, payload)
}

// DecodeGatewayIngress decodes a message the portal pushes to a gateway.
func DecodeGatewayIngress(event string, payload json.RawMessage) (Message, error) {
	return decode(gatewayIngress, event, payload)
}

// DecodeGatewayEgress decodes a message a gateway pushes to the portal.
func DecodeGatewayEgress(event string, payload json.RawMessage) (Message, error) {
	return decode(gatewayEgress, event, payload)
}

// DecodeRelayIngress decodes a message the portal pushes to a relay.
func DecodeRelayIngress(event string, payload json.RawMessage) (Message, error) {
	return decode(relayIngress, event, payload)
}

func decode(table func(string) decoder, event string, payload json.RawMessage) (Message, error) {
	d := table(event)
	if d == nil {
		return Unknown{Name: event, Reason: "unknown event"}, nil
	}
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	m, err := d(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformedPayload, event, err)
	}
	return m, nil
}

func knownResources(rs []Resource) (known []Resource, ignored []string) {
	known = rs[:0:0]
	for _, r := range rs {
		if r.Known() {
			known = append(known, r)
		} else {
			ignored = append(ignored, string(r.Type))
		}
	}
	return known, ignored
}

func decodeClientInit(payload json.RawMessage) (Message, error) {
	var v ClientInit
	if err := json.Unmarshal(payload, &v); err != nil {
		return nil, err
	}
	v.Resources, v.IgnoredResources = knownResources(v.Resources)
	return v, nil
}

func decodeGatewayInit(payload json.RawMessage) (Message, error) {
	var v GatewayInit
	if err := json.Unmarshal(payload, &v); err != nil {
		return nil, err
	}
	return v, nil
}

func decodeResourceCreatedOrUpdated(payload json.RawMessage) (Message, error) {
	var v ResourceCreatedOrUpdated
	if err := json.Unmarshal(payload, &v); err != nil {
		return nil, err
	}
	if !v.Known() {
		return Unknown{Name: EventResourceCreatedOrUpdated, Reason: fmt.Sprintf("unknown resource type %q", v.Type)}, nil
	}
	return v, nil
}

func decodeResourceUpdated(payload json.RawMessage) (Message, error) {
	var v ResourceUpdated
	if err := json.Unmarshal(payload, &v); err != nil {
		return nil, err
	}
	if !v.Known() {
		return Unknown{Name: EventResourceUpdated, Reason: fmt.Sprintf("unknown resource type %q", v.Type)}, nil
	}
	return v, nil
}

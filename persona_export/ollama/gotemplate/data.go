package main

// The data Ollama hands a TEMPLATE in messages mode, written from Ollama's template package
// (template/template.go, late-2026 line): messages and tools arrive as /api/chat takes them
// (apiMessage, apiTool) and are converted to the template shapes below, which is what
// `{{ json ... }}`, `{{ .Tools }}` and field access see:
//
//   - .Tools: a list of tools, each {Type, Items, Function{Name, Description, Parameters{Type,
//     $defs, items, required, properties}}} with those JSON names; the top-level properties
//     are a plain Go map (json sorts its keys), nested ones keep their order.
//   - .Messages: each {Role, Content, Thinking, Images, ToolCalls, ToolName, ToolCallID};
//     each tool call {ID, Function{Index, Name, Arguments}} without JSON tags, Arguments a
//     map whose String() is its JSON (sorted keys).
//
// Only the standard library is used.

import (
	"bytes"
	"encoding/json"
)

// apiMessage is a chat message as /api/chat takes it.
type apiMessage struct {
	Role       string        `json:"role"`
	Content    string        `json:"content"`
	Thinking   string        `json:"thinking,omitempty"`
	Images     []string      `json:"images,omitempty"`
	ToolCalls  []apiToolCall `json:"tool_calls,omitempty"`
	ToolName   string        `json:"tool_name,omitempty"`
	ToolCallID string        `json:"tool_call_id,omitempty"`
}

type apiToolCall struct {
	ID       string `json:"id,omitempty"`
	Function struct {
		Index     int            `json:"index"`
		Name      string         `json:"name"`
		Arguments map[string]any `json:"arguments"`
	} `json:"function"`
}

// apiTool is a tool definition as /api/chat takes it (OpenAI's shape).
type apiTool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
		Parameters  struct {
			Type       string             `json:"type"`
			Defs       any                `json:"$defs,omitempty"`
			Items      any                `json:"items,omitempty"`
			Required   []string           `json:"required,omitempty"`
			Properties *orderedProperties `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

// --- the shapes a TEMPLATE sees -------------------------------------------------------------

type templateTools []templateTool

func (t templateTools) String() string { return marshal(t) }

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string { return marshal(t) }

type templateToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description"`
	Parameters  templateToolParameters `json:"parameters"`
}

type templateToolParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

// templateProperties: Ollama turns the ordered top-level properties into a Go map, so that
// templates can range over them; json then writes the keys sorted.
type templateProperties map[string]toolProperty

// toolProperty is one property's JSON schema as Ollama keeps it (api.ToolProperty): only
// these keys, in this order, empty ones left out.
type toolProperty struct {
	AnyOf       []toolProperty     `json:"anyOf,omitempty"`
	Type        propertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *orderedProperties `json:"properties,omitempty"`
	Required    []string           `json:"required,omitempty"`
}

// propertyType is a type name or a list of them; one name is written as a string.
type propertyType []string

func (p *propertyType) UnmarshalJSON(data []byte) error {
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*p = propertyType{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(data, &many); err != nil {
		return err
	}
	*p = many
	return nil
}

func (p propertyType) MarshalJSON() ([]byte, error) {
	if len(p) == 1 {
		return json.Marshal(p[0])
	}
	return json.Marshal([]string(p))
}

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	return marshal(t)
}

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	return marshal(t)
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

func templateToolsOf(tools []apiTool) templateTools {
	if tools == nil {
		return nil
	}
	out := make(templateTools, len(tools))
	for i, t := range tools {
		p := t.Function.Parameters
		var props templateProperties
		if p.Properties != nil {
			props = templateProperties{}
			for j, k := range p.Properties.keys {
				props[k] = p.Properties.values[j]
			}
		}
		out[i] = templateTool{
			Type:  t.Type,
			Items: t.Items,
			Function: templateToolFunction{
				Name:        t.Function.Name,
				Description: t.Function.Description,
				Parameters: templateToolParameters{
					Type: p.Type, Defs: p.Defs, Items: p.Items, Required: p.Required,
					Properties: props,
				},
			},
		}
	}
	return out
}

func templateMessages(msgs []*apiMessage) []*templateMessage {
	if msgs == nil {
		return nil
	}
	out := make([]*templateMessage, len(msgs))
	for i, m := range msgs {
		var calls []templateToolCall
		for _, c := range m.ToolCalls {
			calls = append(calls, templateToolCall{
				ID: c.ID,
				Function: templateToolCallFunction{
					Index: c.Function.Index, Name: c.Function.Name,
					Arguments: templateArgs(c.Function.Arguments),
				},
			})
		}
		out[i] = &templateMessage{
			Role: m.Role, Content: m.Content, Thinking: m.Thinking, Images: m.Images,
			ToolCalls: calls, ToolName: m.ToolName, ToolCallID: m.ToolCallID,
		}
	}
	return out
}

// marshal is json.Marshal as Ollama calls it (HTML characters escaped), errors ignored.
func marshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// orderedProperties keeps a properties object's keys in the order they came (Ollama's ordered
// property map), for reading and for writing.
type orderedProperties struct {
	keys   []string
	values []toolProperty
}

func (o *orderedProperties) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // the opening brace
		return err
	}
	o.keys, o.values = []string{}, []toolProperty{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		var value toolProperty
		if err := dec.Decode(&value); err != nil {
			return err
		}
		o.keys = append(o.keys, tok.(string))
		o.values = append(o.values, value)
	}
	return nil
}

func (o orderedProperties) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		key, _ := json.Marshal(k)
		value, err := json.Marshal(o.values[i])
		if err != nil {
			return nil, err
		}
		b.Write(key)
		b.WriteByte(':')
		b.Write(value)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

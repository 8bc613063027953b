package tessera

import (
	"fmt"
	"reflect"

	"tessera/internal/wit/imports/tessera_sql_sql"
)

// The service's own SQL database, with SQLite's dialect and types. Parameters are bound
// in order to ?, ?1, ?2, ...; Go values map to SQL values as: nil → NULL, integers and
// bools → INTEGER, floats → REAL, string → TEXT, []byte → BLOB. Column values come back
// as nil, int64, float64, string or []byte.

// SQLError is a failed statement. Kind is one of "invalid-statement",
// "constraint-violation", "not-permitted", "too-large", "timeout", "io".
type SQLError struct {
	Kind    string
	Message string
}

func (e *SQLError) Error() string { return "sql: " + e.Kind + ": " + e.Message }

var sqlErrorKinds = [...]string{"invalid-statement", "constraint-violation", "not-permitted", "too-large", "timeout", "io"}

func sqlError(e tessera_sql_sql.Error) error {
	var msg string
	switch e.Tag() {
	case tessera_sql_sql.Error_InvalidStatement:
		msg = e.InvalidStatement()
	case tessera_sql_sql.Error_ConstraintViolation:
		msg = e.ConstraintViolation()
	case tessera_sql_sql.Error_NotPermitted:
		msg = e.NotPermitted()
	case tessera_sql_sql.Error_TooLarge:
		msg = e.TooLarge()
	case tessera_sql_sql.Error_Timeout:
		msg = e.Timeout()
	case tessera_sql_sql.Error_Io:
		msg = e.Io()
	}
	return &SQLError{Kind: sqlErrorKinds[e.Tag()], Message: msg}
}

// Rows is the result of a query: column names, and one value per column in each row.
type Rows struct {
	Columns []string
	Values  [][]any
}

// Len returns the number of rows.
func (r *Rows) Len() int { return len(r.Values) }

// Maps returns each row as a map from column name to value, ready for encoding/json.
func (r *Rows) Maps() []map[string]any {
	out := make([]map[string]any, len(r.Values))
	for i, row := range r.Values {
		m := make(map[string]any, len(r.Columns))
		for j, c := range r.Columns {
			m[c] = row[j]
		}
		out[i] = m
	}
	return out
}

// Scan copies the columns of row i into dest, one pointer per column, as database/sql
// does: *int64, *int, *float64, *string, *[]byte, *bool or *any. A NULL sets the zero
// value (nil for *any and *[]byte).
func (r *Rows) Scan(i int, dest ...any) error {
	if i < 0 || i >= len(r.Values) {
		return fmt.Errorf("sql: row %d out of range (%d rows)", i, len(r.Values))
	}
	row := r.Values[i]
	if len(dest) != len(row) {
		return fmt.Errorf("sql: Scan got %d destinations for %d columns", len(dest), len(row))
	}
	for j, v := range row {
		if err := scanValue(v, dest[j]); err != nil {
			return fmt.Errorf("sql: column %q: %w", r.Columns[j], err)
		}
	}
	return nil
}

func scanValue(v any, dest any) error {
	switch d := dest.(type) {
	case *any:
		*d = v
		return nil
	case *int64:
		switch x := v.(type) {
		case nil:
			*d = 0
		case int64:
			*d = x
		case float64:
			*d = int64(x)
		default:
			return fmt.Errorf("cannot scan %T into *int64", v)
		}
	case *int:
		var n int64
		if err := scanValue(v, &n); err != nil {
			return err
		}
		*d = int(n)
	case *bool:
		var n int64
		if err := scanValue(v, &n); err != nil {
			return err
		}
		*d = n != 0
	case *float64:
		switch x := v.(type) {
		case nil:
			*d = 0
		case int64:
			*d = float64(x)
		case float64:
			*d = x
		default:
			return fmt.Errorf("cannot scan %T into *float64", v)
		}
	case *string:
		switch x := v.(type) {
		case nil:
			*d = ""
		case string:
			*d = x
		case []byte:
			*d = string(x)
		default:
			*d = fmt.Sprint(x)
		}
	case *[]byte:
		switch x := v.(type) {
		case nil:
			*d = nil
		case []byte:
			*d = x
		case string:
			*d = []byte(x)
		default:
			return fmt.Errorf("cannot scan %T into *[]byte", v)
		}
	default:
		return fmt.Errorf("unsupported destination %T", dest)
	}
	return nil
}

// Result is what a statement changed.
type Result struct {
	RowsAffected int64
	LastInsertID int64 // the rowid of the last row inserted; 0 if the statement inserted none
}

// Statement is one statement of a Batch.
type Statement struct {
	SQL  string
	Args []any
}

// Query runs one statement and returns the rows it produced (it may also write, as in
// INSERT ... RETURNING).
func Query(sql string, args ...any) (*Rows, error) {
	params, err := sqlParams(args)
	if err != nil {
		return nil, err
	}
	res := tessera_sql_sql.Query(sql, params)
	if res.IsErr() {
		return nil, sqlError(res.Err())
	}
	rows := res.Ok()
	out := &Rows{Columns: rows.Columns, Values: make([][]any, len(rows.Rows))}
	for i, row := range rows.Rows {
		vals := make([]any, len(row))
		for j, v := range row {
			vals[j] = fromSQL(v)
		}
		out.Values[i] = vals
	}
	return out, nil
}

// Exec runs one statement that returns no rows.
func Exec(sql string, args ...any) (Result, error) {
	params, err := sqlParams(args)
	if err != nil {
		return Result{}, err
	}
	res := tessera_sql_sql.Execute(sql, params)
	if res.IsErr() {
		return Result{}, sqlError(res.Err())
	}
	return toResult(res.Ok()), nil
}

// Batch runs statements in one transaction: all apply, or none do and the error's
// message starts with "statement N:" naming the failing one.
func Batch(statements ...Statement) ([]Result, error) {
	stmts := make([]tessera_sql_sql.Statement, len(statements))
	for i, s := range statements {
		params, err := sqlParams(s.Args)
		if err != nil {
			return nil, fmt.Errorf("statement %d: %w", i, err)
		}
		stmts[i] = tessera_sql_sql.Statement{Sql: s.SQL, Params: params}
	}
	res := tessera_sql_sql.Batch(stmts)
	if res.IsErr() {
		return nil, sqlError(res.Err())
	}
	out := make([]Result, len(res.Ok()))
	for i, c := range res.Ok() {
		out[i] = toResult(c)
	}
	return out, nil
}

func toResult(c tessera_sql_sql.Changes) Result {
	r := Result{RowsAffected: int64(c.RowsAffected)}
	if c.LastInsertId.IsSome() {
		r.LastInsertID = c.LastInsertId.Some()
	}
	return r
}

func fromSQL(v tessera_sql_sql.Value) any {
	switch v.Tag() {
	case tessera_sql_sql.Value_Integer:
		return v.Integer()
	case tessera_sql_sql.Value_Real:
		return v.Real()
	case tessera_sql_sql.Value_Text:
		return v.Text()
	case tessera_sql_sql.Value_Blob:
		return v.Blob()
	default:
		return nil
	}
}

func sqlParams(args []any) ([]tessera_sql_sql.Value, error) {
	params := make([]tessera_sql_sql.Value, len(args))
	for i, a := range args {
		v, err := toSQL(a)
		if err != nil {
			return nil, fmt.Errorf("sql: parameter %d: %w", i+1, err)
		}
		params[i] = v
	}
	return params, nil
}

func toSQL(a any) (tessera_sql_sql.Value, error) {
	switch x := a.(type) {
	case nil:
		return tessera_sql_sql.MakeValueNull(), nil
	case string:
		return tessera_sql_sql.MakeValueText(x), nil
	case []byte:
		return tessera_sql_sql.MakeValueBlob(x), nil
	case int64:
		return tessera_sql_sql.MakeValueInteger(x), nil
	case int:
		return tessera_sql_sql.MakeValueInteger(int64(x)), nil
	case float64:
		return tessera_sql_sql.MakeValueReal(x), nil
	case bool:
		if x {
			return tessera_sql_sql.MakeValueInteger(1), nil
		}
		return tessera_sql_sql.MakeValueInteger(0), nil
	}
	// Other integer, float, string and byte-slice types (uint8, MyID, json.RawMessage...).
	rv := reflect.ValueOf(a)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return tessera_sql_sql.MakeValueInteger(rv.Int()), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return tessera_sql_sql.MakeValueInteger(int64(rv.Uint())), nil
	case reflect.Float32, reflect.Float64:
		return tessera_sql_sql.MakeValueReal(rv.Float()), nil
	case reflect.String:
		return tessera_sql_sql.MakeValueText(rv.String()), nil
	case reflect.Slice:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return tessera_sql_sql.MakeValueBlob(rv.Bytes()), nil
		}
	case reflect.Pointer:
		if rv.IsNil() {
			return tessera_sql_sql.MakeValueNull(), nil
		}
		return toSQL(rv.Elem().Interface())
	}
	return tessera_sql_sql.Value{}, fmt.Errorf("unsupported type %T", a)
}
